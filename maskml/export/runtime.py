"""The ONNX Runtime backend: an exported folder loaded as a model that maskml's predictors take.

    model = maskml.load_model("mobile_sam", checkpoint="mobile_sam_onnx/", backend="onnxruntime")
    predictor = maskml.ImagePredictor(model)

Only the two networks run in ONNX Runtime; resizing, coordinate frames, prompt packing, mask
selection and upscaling are the PyTorch backends' own code (maskml.predict.image), inherited here.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import maskml
from maskml.errors import MaskmlError
from maskml.hub import sha256_of
from maskml.export import FORMAT, FORMAT_VERSION, MANIFEST, require_onnx
from maskml.models.sam.mask_decoder import select_masks
from maskml.predict.image import Sam2Backend, SamBackend, prompts_as_points
from maskml.zoo import get_entry

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def read_manifest(folder: Path, name: str) -> dict:
    """The folder's manifest, checked against the model asked for and this maskml version, and every
    file it lists against its SHA-256."""
    if not folder.is_dir():
        raise MaskmlError(f"checkpoint {folder} is not a folder; backend='onnxruntime' takes the folder written "
                          f"by `maskml export {name} --out FOLDER`")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest["format"] != FORMAT:
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise MaskmlError(f"{folder} is not a maskml ONNX export (no readable {MANIFEST}); write one with "
                          f"`maskml export {name} --out {folder}`") from None
    redo = f"export it again with `maskml export {name} --out NEW_FOLDER`"
    if manifest.get("model") != name:
        raise MaskmlError(f"{folder} holds the ONNX export of {manifest.get('model')}, not {name}; load it as "
                          f"{manifest.get('model')} or {redo}")
    if manifest.get("maskml_version") != maskml.__version__:
        raise MaskmlError(f"{folder} was exported by maskml {manifest.get('maskml_version')}, this is maskml "
                          f"{maskml.__version__}; {redo}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise MaskmlError(f"{folder} was exported by an earlier build of maskml {maskml.__version__}, whose graphs "
                          f"differ from this one's; {redo}")
    for file, digest in manifest["files"].items():
        path = folder / file
        if not path.is_file():
            raise MaskmlError(f"{path} is missing from the ONNX export; {redo}")
        if sha256_of(path) != digest:
            raise MaskmlError(f"{path} is corrupt (its SHA-256 differs from the one in {MANIFEST}); {redo}")
    return manifest


def _session_options():
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # the provider's notes on node placement are not the user's business
    options.intra_op_num_threads = torch.get_num_threads()  # one knob, torch.set_num_threads, for both backends
    # the graphs alternate with torch's own work (resizing, upscaling): ORT threads that spin-wait after a run
    # take the cores torch needs next (on a 2-core machine, per prompt time went from about 50 to 26 ms)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _session(path: Path, providers: list[str]):
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(str(path), _session_options(), providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad graphs
        raise MaskmlError(f"onnxruntime cannot load {path}: {exc}") from None


def check_providers(providers) -> list[str]:
    import onnxruntime

    providers = list(providers or DEFAULT_PROVIDERS)
    available = onnxruntime.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise MaskmlError(f"onnxruntime provider {', '.join(missing)} is not available here; available: "
                          f"{', '.join(available)} (a GPU provider needs its onnxruntime build, e.g. "
                          f"onnxruntime-gpu)")
    return providers


class OnnxImageModel:
    """An exported image model (SAM, MobileSAM, SAM 2 image mode) on ONNX Runtime."""

    backend = "onnxruntime"
    mask_threshold = 0.0
    device = torch.device("cpu")  # inputs and outputs are CPU tensors; providers choose where graphs run

    def __init__(self, folder: Path, manifest: dict, providers: list[str]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.model_name = manifest["model"]
        self.family = manifest["family"]
        self.image_size = manifest["image_size"]
        self.providers = providers
        stability = manifest["single_mask_stability"]
        self.single_mask_stability = tuple(stability) if stability is not None else None
        graphs = manifest["graphs"]
        self.encoder = _session(folder / graphs["encoder"]["file"], providers)
        # the low-resolution graph: the predictor upscales only the masks it keeps (decoder.onnx, with its own
        # upscaling to the original size, is for deployments without maskml)
        self.decoder = _session(folder / graphs["decoder_lowres"]["file"], providers)

    def image_backend(self):
        return OnnxSamBackend(self) if self.family == "sam" else OnnxSam2Backend(self)

    def encode(self, resized: torch.Tensor) -> dict:
        outputs = self.encoder.run(None, {"image": resized.numpy()})
        state = {"embedding": torch.from_numpy(outputs[0])}
        if self.family == "sam2":
            state["high_res"] = [torch.from_numpy(x) for x in outputs[1:3]]
        return state

    def decode(self, state: dict, points, boxes, mask_input, multimask: bool, pad: bool):
        coords, labels = prompts_as_points(points, boxes, pad)
        if coords is None:  # a mask prompt alone: no sparse tokens at all, as in the PyTorch prompt encoder
            coords, labels = torch.zeros(1, 0, 2), torch.zeros(1, 0)
        batch = coords.shape[0]
        has_mask = mask_input is not None
        feeds = {"image_embeddings": state["embedding"].numpy(),
                 "point_coords": coords.float().numpy(), "point_labels": labels.float().numpy(),
                 "mask_input": (mask_input.numpy() if has_mask else np.zeros((batch, 1, 256, 256), np.float32)),
                 "has_mask_input": np.array([float(has_mask)], np.float32)}
        if self.family == "sam2":
            feeds["high_res_feats_0"], feeds["high_res_feats_1"] = (x.numpy() for x in state["high_res"])
        iou_pred, low_res = self.decoder.run(None, feeds)
        return select_masks(torch.from_numpy(low_res), torch.from_numpy(iou_pred), multimask,
                            self.single_mask_stability)


class OnnxSamBackend(SamBackend):
    def encode(self, resized: torch.Tensor) -> dict:
        return self.model.encode(resized)

    def decode(self, state, points, boxes, mask_input, multimask):
        # SAM pads the clicks with a "not a point" token only when there is no box
        return self.model.decode(state, points, boxes, mask_input, multimask, pad=boxes is None and points is not None)


class OnnxSam2Backend(Sam2Backend):
    def encode(self, resized: torch.Tensor) -> dict:
        return self.model.encode(resized)

    def decode(self, state, points, boxes, mask_input, multimask):
        # SAM 2 always pads clicks and corners; a mask prompt alone has no tokens at all
        return self.model.decode(state, points, boxes, mask_input, multimask,
                                 pad=points is not None or boxes is not None)


def load_onnx_model(name: str, folder: str | Path | None, providers=None):
    entry = get_entry(name)
    require_onnx()
    if folder is None:
        raise MaskmlError(f"backend='onnxruntime' needs checkpoint=FOLDER, a folder written by "
                          f"`maskml export {name} --out FOLDER`")
    providers = check_providers(providers)
    manifest = read_manifest(Path(folder), entry.name)
    if entry.family == "cutie":
        from maskml.export.cutie import OnnxCutie

        return OnnxCutie(Path(folder), manifest, providers)
    if entry.family == "sam2":  # also runs SAM 2 video
        from maskml.export.sam2_video import OnnxSam2Model

        return OnnxSam2Model(Path(folder), manifest, providers)
    return OnnxImageModel(Path(folder), manifest, providers)
