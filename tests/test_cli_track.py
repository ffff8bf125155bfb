"""`maskml track` end to end with Cutie, through the real entry point."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

import maskml
from conftest import FIXTURES, write_parity_checkpoint
from maskml.cli import main
from maskml.io.masks import read_mask, save_mask

JUDO = FIXTURES / "cutie" / "inputs" / "images" / "judo"
JUDO_MASKS = FIXTURES / "cutie" / "inputs" / "masks" / "judo"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_parity_checkpoint(FIXTURES / "cutie" / "manifest_cutie_small.json",
                                   tmp_path_factory.mktemp("ck") / "cutie-small-mega.pth")


def test_track_frame_folder(tmp_path, checkpoint):
    out, probs, overlay = tmp_path / "out", tmp_path / "probs", tmp_path / "tracked.mp4"
    rc = main(["track", str(JUDO), "--model", "cutie_small", "--checkpoint", str(checkpoint), "--mask-dir",
               str(JUDO_MASKS), "--out", str(out), "--probs", str(probs), "--overlay", str(overlay),
               "--option", "max_internal_size=-1"])
    assert rc == 0
    names = sorted(p.stem for p in JUDO.glob("*.jpg"))
    assert sorted(p.stem for p in out.iterdir()) == names and sorted(p.stem for p in probs.iterdir()) == names

    tracker = maskml.VideoTracker(maskml.load_model("cutie_small", checkpoint=checkpoint), max_internal_size=-1)
    for i, name in enumerate(names):
        mask_file = JUDO_MASKS / f"{name}.png"
        result = tracker.step(np.array(Image.open(JUDO / f"{name}.jpg").convert("RGB")),
                              read_mask(mask_file) if mask_file.exists() else None)
        labels = read_mask(out / f"{name}.png")
        assert Image.open(out / f"{name}.png").mode == "P"
        np.testing.assert_array_equal(labels, result.labels.numpy())
        p = np.load(probs / f"{name}.npy")
        assert p.dtype == np.float16 and p.shape == (2, 360, 640)
        if i < 5:
            assert not p[1].any()  # object 2 appears at frame 5
        expected = np.zeros_like(p)
        for k, obj in enumerate(result.object_ids):
            expected[obj - 1] = result.probs[k].numpy()
        np.testing.assert_array_equal(p, expected)
    capture = cv2.VideoCapture(str(overlay))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    capture.release()


def test_track_video_file_and_options(tmp_path, checkpoint):
    video = tmp_path / "judo.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (640, 360))
    for path in sorted(JUDO.glob("*.jpg")):
        writer.write(cv2.imread(str(path)))
    writer.release()
    masks = tmp_path / "masks"
    masks.mkdir()
    shutil.copy(JUDO_MASKS / "00000.png", masks / "00000.png")
    rc = main(["track", str(video), "--model", "cutie_small", "--checkpoint", str(checkpoint), "--mask-dir",
               str(masks), "--out", str(tmp_path / "out"), "--option", "mem_every=3",
               "--option", "use_long_term=true", "--option", "long_term.max_mem_frames=4",
               "--option", "long_term.min_mem_frames=2"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i:05d}.png" for i in range(10)]


def test_bad_input_is_one_line_and_keeps_earlier_results(tmp_path, checkpoint, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.png").write_text("earlier result")
    base = ["track", str(JUDO), "--model", "cutie_small", "--checkpoint", str(checkpoint), "--out", str(out)]

    def fails(extra, message, setup=None):
        masks = tmp_path / "m"
        shutil.rmtree(masks, ignore_errors=True)
        masks.mkdir()
        if setup:
            setup(masks)
        assert main(base + ["--mask-dir", str(masks)] + extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
        assert [p.name for p in out.iterdir()] == ["earlier.png"]

    fails([], "holds no .png masks")
    fails([], "named after no frame", lambda m: shutil.copy(JUDO_MASKS / "00000.png", m / "00042.png"))
    fails([], "but the frames are 640x360",
          lambda m: Image.fromarray(np.ones((10, 10), np.uint8)).save(m / "00000.png"))
    fails([], "contains no object", lambda m: Image.fromarray(np.zeros((360, 640), np.uint8)).save(m / "00000.png"))
    fails(["--option", "mem_evry=3"], "unknown tracker option 'mem_evry'",
          lambda m: shutil.copy(JUDO_MASKS / "00000.png", m / "00000.png"))
    fails(["--option", "mem_every"], "KEY=VALUE", lambda m: shutil.copy(JUDO_MASKS / "00000.png", m / "00000.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["track", str(empty), "--mask-dir", str(JUDO_MASKS), "--out", str(out)]) == 2
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video at all")
    assert main(["track", str(corrupt), "--mask-dir", str(JUDO_MASKS), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds no frames" in err and "cannot decode video" in err
    assert [p.name for p in out.iterdir()] == ["earlier.png"]


def test_too_many_objects_are_refused_before_the_model_loads(tmp_path, small_judo, cutie_small_checkpoint, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    every_id = np.arange(96 * 160).reshape(96, 160) % 256  # a mask of 0..255: a picture saved as a mask
    save_mask(masks / "00000.png", every_id)
    base = ["track", str(small_judo), "--model", "cutie_small", "--checkpoint", str(cutie_small_checkpoint),
            "--mask-dir", str(masks), "--out", str(tmp_path / "out")]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "loading" not in err, err
    assert (f"mask {masks / '00000.png'} holds 255 object ids (1 to 255): more than the limit of 32 objects; "
            f"255 objects would take about ") in err
    assert "with cutie_small on 160x96 frames" in err and "To track that many, give --max-objects 255" in err

    three = np.zeros((96, 160), np.uint8)
    three[10:30, 10:30], three[40:60, 40:60], three[70:90, 100:140] = 1, 2, 3
    save_mask(masks / "00000.png", three)
    assert main(base + ["--max-objects", "2"]) == 2
    assert "holds 3 object ids (1 to 3): more than the limit of 2 objects" in capsys.readouterr().err
    assert main(base + ["--max-objects", "2", "--point", "4:1:5,5", "--prompter", "mobile_sam"]) == 2
    assert "holds 3 object ids" in capsys.readouterr().err
    save_mask(masks / "00000.png", np.minimum(three, 2))
    assert main(base + ["--max-objects", "2", "--point", "4:1:5,5", "--prompter", "mobile_sam"]) == 2
    assert "the masks and prompts give 3 objects: more than the limit of 2" in capsys.readouterr().err
    assert main(base + ["--max-objects", "0"]) == 2
    assert "--max-objects 0: give a positive number of objects" in capsys.readouterr().err
    save_mask(masks / "00000.png", three)
    assert main(base + ["--max-objects", "3"]) == 0
    assert sorted(np.unique(read_mask(tmp_path / "out" / "00000.png")).tolist()) == [0, 1, 2, 3]


def test_broken_video_prints_only_maskmls_line(tmp_path):
    """FFmpeg's own "[mov,mp4,...] moov atom not found" line is silenced: stderr is maskml's one line."""
    import subprocess
    import sys

    writer = cv2.VideoWriter(str(tmp_path / "good.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    data = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[:len(data) // 2])  # FFmpeg: "Invalid mdhd time scale"
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")  # FFmpeg: "moov atom not found"
    for name in ("truncated.mp4", "junk.mp4"):
        run = subprocess.run([sys.executable, "-m", "maskml", "track", str(tmp_path / name), "--mask-dir",
                              str(JUDO_MASKS), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                             cwd=FIXTURES.parents[1])
        assert run.returncode == 2
        assert run.stderr.startswith(f"maskml track: error: cannot decode video {tmp_path / name}") and \
            run.stderr.count("\n") == 1, run.stderr
