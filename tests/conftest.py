"""Shared test helpers: fixture paths and models loaded with the parity weights.

Parity weights are written in the official checkpoint layout and loaded through
maskml.load_model(name, checkpoint=path), the path users take.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"
sys.path.insert(0, str(TESTS))

from weights import fill_state_dict  # noqa: E402

torch.set_num_threads(2)


def manifest_keys(path: Path) -> dict[str, list[int]]:
    return json.loads(path.read_text())["keys"]


def write_parity_checkpoint(manifest: Path, dest: Path, wrap_key: str | None = None) -> Path:
    state = fill_state_dict(manifest_keys(manifest))
    torch.save({wrap_key: state} if wrap_key else state, dest)
    return dest


def video_fourcc(path) -> str:
    """The codec of a video file as FFmpeg reports it through OpenCV ("VP90", "avc1", "FMP4", ...)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    code = int(capture.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF
    capture.release()
    return code.to_bytes(4, "little").decode("ascii", "replace")


# what video_fourcc reads back for each fourcc maskml's VideoWriter may write with
READ_BACK_FOURCCS = {"avc1": {"avc1", "h264", "H264"}, "vp09": {"VP90", "vp09"}, "VP90": {"VP90", "vp09"},
                     "VP80": {"VP80"}, "mp4v": {"FMP4", "mp4v"}}


def unpack_masks(npz) -> np.ndarray:
    shape = tuple(int(s) for s in npz["masks_shape"])
    return np.unpackbits(npz["masks_packed"], count=int(np.prod(shape))).reshape(shape).astype(bool)


def sigint_as_in_a_terminal() -> None:
    """A subprocess's preexec_fn: Ctrl-C (SIGINT) back to its default, so Python turns it into
    KeyboardInterrupt as in a terminal, also when the tests run as a background job (started with SIGINT
    ignored, which a child inherits and Python then leaves alone)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def sam_checkpoints(tmp_path_factory):
    """Parity checkpoints of mobile_sam and sam_vit_b, written once per session."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "mobile_sam": write_parity_checkpoint(FIXTURES / "sam" / "manifest_vit_t.json", root / "mobile_sam.pt"),
        "sam_vit_b": write_parity_checkpoint(FIXTURES / "sam" / "manifest_vit_b.json", root / "sam_vit_b_01ec64.pth"),
    }


@pytest.fixture(scope="session")
def truck_image() -> np.ndarray:
    from maskml.io.images import read_image

    return read_image(FIXTURES / "sam" / "truck_1200x800.png")


@pytest.fixture(scope="session")
def cutie_small_checkpoint(tmp_path_factory) -> Path:
    return write_parity_checkpoint(FIXTURES / "cutie" / "manifest_cutie_small.json",
                                   tmp_path_factory.mktemp("cutie") / "cutie-small-mega.pth")


@pytest.fixture(scope="session")
def small_judo(tmp_path_factory) -> Path:
    """The first six judo frames at 160x96, as a frame folder: quick to track."""
    import cv2
    from PIL import Image

    folder = tmp_path_factory.mktemp("small_judo") / "frames"
    folder.mkdir()
    for path in sorted((FIXTURES / "cutie" / "inputs" / "images" / "judo").glob("*.jpg"))[:6]:
        frame = cv2.resize(np.array(Image.open(path).convert("RGB")), (160, 96), interpolation=cv2.INTER_AREA)
        Image.fromarray(frame).save(folder / f"{path.stem}.png")
    return folder


@pytest.fixture(scope="session")
def sam2_checkpoint(tmp_path_factory) -> Path:
    """The sam2.1_hiera_t parity checkpoint in the official {'model': state_dict} layout."""
    return write_parity_checkpoint(FIXTURES / "sam2" / "manifest_sam2.1_hiera_tiny.json",
                                   tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt", wrap_key="model")


@pytest.fixture(scope="session")
def small_clip(tmp_path_factory) -> Path:
    """The ten judo frames at 160x96 as an .mp4 (MPEG-4 part 2: quick to write and read)."""
    import cv2
    from PIL import Image

    from maskml.io.video import VideoWriter

    clip = tmp_path_factory.mktemp("small_clip") / "judo.mp4"
    with VideoWriter(clip, fps=10, size=(160, 96), codecs=("mp4v",)) as video:
        for path in sorted((FIXTURES / "cutie" / "inputs" / "images" / "judo").glob("*.jpg")):
            video.write(cv2.resize(np.array(Image.open(path).convert("RGB")), (160, 96), interpolation=cv2.INTER_AREA))
    return clip


@pytest.fixture(scope="session")
def serve_models(sam_checkpoints, cutie_small_checkpoint):
    """(prompter, tracker) for `maskml serve` tests: mobile_sam and cutie_small with the stand-in weights."""
    import maskml

    return (maskml.load_model("mobile_sam", checkpoint=sam_checkpoints["mobile_sam"]),
            maskml.load_model("cutie_small", checkpoint=cutie_small_checkpoint))


@pytest.fixture(scope="session")
def cutie_onnx_export(cutie_small_checkpoint, tmp_path_factory) -> Path:
    """maskml export of the cutie_small parity checkpoint (written once per session)."""
    from maskml.export.exporter import export_model

    return export_model("cutie_small", tmp_path_factory.mktemp("onnx") / "cutie_small", cutie_small_checkpoint,
                        progress=False)


@pytest.fixture(scope="session")
def mobile_sam_export(sam_checkpoints, tmp_path_factory) -> Path:
    """maskml export of the mobile_sam stand-in checkpoint (written once per session)."""
    from maskml.export.exporter import export_model

    return export_model("mobile_sam", tmp_path_factory.mktemp("onnx") / "mobile_sam", sam_checkpoints["mobile_sam"],
                        progress=False)


@pytest.fixture(scope="session")
def sam2_onnx_export(sam2_checkpoint, tmp_path_factory) -> Path:
    """maskml export of the sam2.1_hiera_t parity checkpoint: image and video graphs (written once per session)."""
    from maskml.export.exporter import export_model

    return export_model("sam2.1_hiera_t", tmp_path_factory.mktemp("onnx") / "sam2", sam2_checkpoint, progress=False)
