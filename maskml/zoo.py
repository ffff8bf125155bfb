"""Model zoo: one registry from a model name to its architecture, official weights
file (URL, SHA-256, layout inside the file) and loader.

    model = maskml.load_model("mobile_sam")                      # cache or download
    model = maskml.load_model("sam_vit_b", checkpoint="sam_vit_b_01ec64.pth")
"""
from __future__ import annotations

import difflib
import importlib
import pickle
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskml.errors import MaskmlError
from maskml.hub import cached_file


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: str  # "module:function", called with **config
    config: dict[str, Any]
    url: str
    sha256: str  # "" when the release publishes no SHA-256 (then md5, if published, is checked)
    description: str = ""
    state_dict_key: str | None = None  # the file holds {key: state_dict} instead of the state dict itself
    ignored_prefixes: tuple[str, ...] = ()  # tensors in the official file the architecture does not use
    md5: str = ""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def family(self) -> str:
        return self.builder.split(":")[0].split(".")[2]  # maskml.models.<family>...

    def build(self) -> nn.Module:
        module, function = self.builder.split(":")
        return getattr(importlib.import_module(module), function)(**self.config)


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    _REGISTRY[entry.name] = entry
    return entry


def list_models(family: str | None = None) -> list[str]:
    """Every model name, or those of one family ("sam", "sam2" or "cutie")."""
    families = sorted({e.family for e in _REGISTRY.values()})
    if family is not None and family not in families:
        raise MaskmlError(f"there is no model family {family!r}: give one of {', '.join(families)} (or none)")
    return [name for name, e in _REGISTRY.items() if family is None or e.family == family]


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise MaskmlError(f"unknown model {name!r}.{hint} Known models: {', '.join(_REGISTRY)}.") from None


def build_model(name: str) -> nn.Module:
    """The architecture of `name` with freshly initialised weights, in eval mode."""
    model = get_entry(name).build().eval()
    model.model_name = name
    return model


def first_sentence(text: str) -> str:
    """The first sentence of a library's error message, whose advice is meant for its own users."""
    return next(iter(text.strip().splitlines()), "").split(". ")[0].rstrip(".")


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive; before torch 1.6, a pickle (first byte 0x80)


def read_checkpoint(entry: ModelEntry, path: str | Path, progress: bool = False) -> dict[str, torch.Tensor]:
    """The state dict inside an official checkpoint file, unused tensors removed. progress: say on stderr
    that the file is being loaded, once it is known to be a checkpoint (a large model takes 10-50 s)."""
    path = Path(path)
    official = f"expected the official {entry.filename}"
    if path.is_dir():
        raise MaskmlError(f"checkpoint {path} is a folder, not a file: give the checkpoint file itself ({official}).")
    if not path.is_file():
        raise MaskmlError(f"checkpoint file {path} does not exist ({official}).")
    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except PermissionError:
        raise MaskmlError(f"checkpoint {path} is not readable by the user running maskml: give it read permission "
                          f"(chmod a+r) or run as its owner.") from None
    zipped = head == ZIP_MAGIC
    if not zipped and not head.startswith(b"\x80"):
        raise MaskmlError(f"{path} is not a checkpoint: a PyTorch checkpoint is a zip archive (or an old-style "
                          f"pickle), and this file is neither ({official}).")
    if progress:
        print(f"loading {entry.name} from {path} ...", file=sys.stderr, flush=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the error below says what counts
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as exc:
        # torch's message goes on to advise weights_only=False, which would let the file run code
        detail = first_sentence(str(exc).partition("WeightsUnpickler error:")[2])
        reason = f" ({detail})" if detail else ""
        raise MaskmlError(f"cannot read checkpoint {path} as tensors only{reason}: it is damaged, or it holds other "
                          f"Python objects, which maskml does not unpickle as they could run code "
                          f"({official}).") from None
    except Exception as exc:  # noqa: BLE001 - any other failure means "not a checkpoint we can read"
        raise MaskmlError(f"cannot read checkpoint {path}: {type(exc).__name__}: {first_sentence(str(exc))} "
                          f"(the file is damaged or not a PyTorch checkpoint; {official}).") from None
    state = state_in(entry, obj)
    if state is None:
        guess = _guess_model(obj, entry.name)
        hint = f" It looks like a checkpoint for {guess}." if guess else ""
        if entry.state_dict_key is not None:
            raise MaskmlError(f"checkpoint {path} has no {entry.state_dict_key!r} entry holding tensors; {entry.name} "
                              f"expects the official {entry.filename} layout ({{{entry.state_dict_key!r}: "
                              f"state_dict}}).{hint}")
        raise MaskmlError(f"checkpoint {path} does not hold a state dict of tensors ({official}).{hint}")
    return state


def state_in(entry: ModelEntry, obj) -> dict[str, torch.Tensor] | None:
    """The state dict that `obj`, a loaded checkpoint file, holds in the layout of `entry`'s official file
    (unused tensors removed), or None when the layout is another."""
    if entry.state_dict_key is not None:
        obj = obj.get(entry.state_dict_key) if isinstance(obj, dict) else None
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        return None
    return {k: v for k, v in obj.items() if not k.startswith(entry.ignored_prefixes)}


def _mismatch(model_sd: dict[str, torch.Tensor], file_sd: dict[str, torch.Tensor]):
    missing = [k for k in model_sd if k not in file_sd]
    unexpected = [k for k in file_sd if k not in model_sd]
    shapes = [(k, tuple(file_sd[k].shape), tuple(model_sd[k].shape))
              for k in model_sd if k in file_sd and file_sd[k].shape != model_sd[k].shape]
    return missing, unexpected, shapes


def _guess_model(obj, exclude: str) -> str | None:
    """Name of another registered model whose file layout and architecture fit `obj` (a loaded checkpoint) exactly."""
    for name, entry in _REGISTRY.items():
        state = state_in(entry, obj)
        if name == exclude or state is None:
            continue
        with torch.device("meta"):
            try:
                other = entry.build().state_dict()
            except Exception:  # noqa: BLE001 - a family that cannot build on meta is simply not a guess
                continue
        if not any(_mismatch(other, state)):
            return name
    return None


def load_state(model: nn.Module, entry: ModelEntry, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True), but a mismatch becomes one readable MaskmlError."""
    missing, unexpected, shapes = _mismatch(model.state_dict(), state)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. " + ", ".join(
                f"{k}: file {list(a)} vs model {list(b)}" for k, a, b in shapes[:2]) + ")")
        guess = _guess_model({entry.state_dict_key: state} if entry.state_dict_key else state, entry.name)
        hint = f" It looks like a checkpoint for {guess}." if guess else ""
        raise MaskmlError(f"checkpoint {source} does not fit {entry.name}: {'; '.join(parts)}.{hint}")
    model.load_state_dict(state, strict=True)


BACKENDS = ("torch", "onnxruntime")


def load_model(name: str, checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
               progress: bool = True, backend: str = "torch", providers: list[str] | None = None) -> nn.Module:
    """Build `name` and load its official weights, from `checkpoint` or from the cache folder
    ($MASKML_HOME, default ~/.cache/maskml), downloading them there if needed. progress: report on
    stderr what takes time (the download's progress bar, a line while the weights load); False is silent.
    backend="onnxruntime": checkpoint is a folder written by `maskml export`, run by ONNX Runtime with
    `providers` (default CPU; they, not `device`, choose the hardware)."""
    entry = get_entry(name)
    if backend not in BACKENDS:
        raise MaskmlError(f"unknown backend {backend!r}; choose {' or '.join(BACKENDS)}")
    if backend == "onnxruntime":
        if str(device) != "cpu":
            raise MaskmlError(f"device {device!r} does not apply to backend='onnxruntime': choose the hardware "
                              f"with providers (e.g. CUDAExecutionProvider)")
        from maskml.export.runtime import load_onnx_model

        return load_onnx_model(name, checkpoint, providers)
    if providers is not None:
        raise MaskmlError("providers apply to backend='onnxruntime' only")
    path = Path(checkpoint) if checkpoint is not None else cached_file(entry.filename, entry.url, entry.sha256,
                                                                      progress=progress, md5=entry.md5)
    state = read_checkpoint(entry, path, progress)
    model = build_model(name)
    load_state(model, entry, state, str(path))
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise MaskmlError(f"cannot move {name} to device {device!r}: {exc}") from None
    return model.eval()


_SAM = "maskml.models.sam.sam:build_sam"
_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

register(ModelEntry(
    "sam_vit_b", _SAM, dict(encoder="vit", embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    _SAM_URL + "sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    "SAM ViT-B (91M encoder parameters)"))
register(ModelEntry(
    "sam_vit_l", _SAM,
    dict(encoder="vit", embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    _SAM_URL + "sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    "SAM ViT-L (308M encoder parameters)"))
register(ModelEntry(
    "sam_vit_h", _SAM,
    dict(encoder="vit", embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    _SAM_URL + "sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    "SAM ViT-H (637M encoder parameters)"))
register(ModelEntry(
    "mobile_sam", _SAM, dict(encoder="tiny_vit"),
    "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
    "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
    "MobileSAM: TinyViT-5M encoder distilled from SAM ViT-H, SAM's decoder",
    # the released file still carries TinyViT's ImageNet classifier
    ignored_prefixes=("image_encoder.norm_head.", "image_encoder.head.")))

_CUTIE = "maskml.models.cutie.cutie:build_cutie"
_CUTIE_URL = "https://github.com/hkchengrex/Cutie/releases/download/v1.0/"
# The Cutie release publishes an MD5 for the base model only (cutie/utils/download_models.py)
register(ModelEntry(
    "cutie_small", _CUTIE, dict(size="small"), _CUTIE_URL + "cutie-small-mega.pth", "",
    "Cutie small (ResNet-18 pixel encoder), trained on the MEGA data mix",
    ignored_prefixes=("aux_computer.",)))
register(ModelEntry(
    "cutie_base", _CUTIE, dict(size="base"), _CUTIE_URL + "cutie-base-mega.pth", "",
    "Cutie base (ResNet-50 pixel encoder), trained on the MEGA data mix",
    ignored_prefixes=("aux_computer.",), md5="a6071de6136982e396851903ab4c083a"))

_SAM2 = "maskml.models.sam2.sam2:build_sam2"
_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/"
_HIERA = {"t": ("tiny", "Hiera-T"), "s": ("small", "Hiera-S"), "b+": ("base_plus", "Hiera-B+"), "l": ("large", "Hiera-L")}
# SHA-256 of the released files, by file name (the release page publishes none; these are the values
# that downstream projects pin for these exact URLs, e.g. micro-sam's v2 model registry)
_SAM2_SHA256 = {
    "sam2_hiera_tiny.pt": "65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125",
    "sam2_hiera_small.pt": "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3",
    "sam2_hiera_base_plus.pt": "d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071",
    "sam2_hiera_large.pt": "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b",
    "sam2.1_hiera_tiny.pt": "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
    "sam2.1_hiera_small.pt": "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
    "sam2.1_hiera_base_plus.pt": "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
    "sam2.1_hiera_large.pt": "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
}
for _version, _release in (("2", "072824"), ("2.1", "092824")):
    for _short, (_size, _label) in _HIERA.items():
        _file = f"sam{_version}_hiera_{_size}.pt"
        register(ModelEntry(
            f"sam{_version}_hiera_{_short}", _SAM2, dict(size=_size, version="2.0" if _version == "2" else "2.1"),
            f"{_SAM2_URL}{_release}/{_file}", _SAM2_SHA256[_file],
            f"SAM {_version} with a {_label} image encoder, images and video", state_dict_key="model"))

# Sizes in bytes of the official files served at the URLs above, where an exact figure is on record (not yet
# for the SAM 2 files of 07/2024 nor for Cutie's: `maskml models` shows "?" for those)
OFFICIAL_FILE_BYTES = {
    "sam_vit_b_01ec64.pth": 375042383,
    "sam_vit_l_0b3195.pth": 1249524607,
    "sam_vit_h_4b8939.pth": 2564550879,
    "mobile_sam.pt": 40728226,
    "sam2.1_hiera_tiny.pt": 156008466,
    "sam2.1_hiera_small.pt": 184416285,
    "sam2.1_hiera_base_plus.pt": 323606802,
    "sam2.1_hiera_large.pt": 898083611,
}
# What each family is used for: SAM prompts images, Cutie tracks video, SAM 2 does both
FAMILY_ROLES = {"sam": "image prompter", "cutie": "video tracker", "sam2": "image prompter + video tracker"}


def parameter_count(name: str) -> int:
    """Parameters of the architecture of `name` (built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        return sum(p.numel() for p in get_entry(name).build().parameters())
