"""Training checkpoints: the whole state a run needs to continue exactly, written so that a kill at any moment
(kill -9 included) leaves either the previous file or the new one, never a broken one."""
from __future__ import annotations

import random
from pathlib import Path

import torch

from maskml.errors import MaskmlError
from maskml.io.images import atomic_path

FORMAT = "maskml-train-1"


def rng_state() -> dict:
    """This process's global random states (the data and prompts draw from per-item generators instead; these
    cover anything else, e.g. dropout)."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_as_tuples(state["python"]))


def _as_tuples(value):
    # random.setstate wants the nested tuples it gave; a round trip through torch.save keeps them, but be lenient
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MaskmlError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint we can read"
        raise MaskmlError(f"cannot read training checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise MaskmlError(f"{path} is not a maskml training checkpoint (checkpoints/last.pt of a run); to start "
                          f"from released weights, set them in the model config instead")
    return state


def remove_temporaries(folder: Path) -> None:
    """Delete the temporary files of checkpoint writes that a kill interrupted (atomic_path's `.NAME.*.pt`)."""
    for stem in ("last", "best"):
        for tmp in folder.glob(f".{stem}.*.pt"):
            tmp.unlink(missing_ok=True)
