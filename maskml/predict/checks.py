"""Checks every tracker and the pipeline apply to what users give them: object ids, id maps, point
labels, frame sizes, and how many objects one process can track."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from maskml.errors import MaskmlError

DEFAULT_MAX_OBJECTS = 32  # a mask file with more ids than this is more often a wrong file than a wish


def check_object_id(value) -> int:
    """An object id is a positive integer (bool is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise MaskmlError(f"an object id must be a positive integer, got {value!r}")
    return int(value)


def ids_to_remove(ids: Iterable[int], tracked: Iterable[int]) -> set[int]:
    """The ids of remove_objects(ids), checked before anything is removed: each a tracked object."""
    if isinstance(ids, (int, np.integer, str, bytes)) or not hasattr(ids, "__iter__"):
        raise MaskmlError(f"remove_objects takes an iterable of object ids, e.g. remove_objects([2]), got {ids!r}")
    ids = {check_object_id(i) for i in ids}
    tracked = sorted(tracked)
    unknown = sorted(ids.difference(tracked))
    if unknown:
        raise MaskmlError(f"cannot remove objects {unknown}: they are not tracked (objects: {tracked or 'none'})")
    return ids


def as_labels(labels, count: int) -> torch.Tensor:
    """Point labels, one per point, as a flat int64 tensor of 1 (object) and 0 (background)."""
    try:
        values = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        values = None
    if values is None or not np.isin(values, (0, 1)).all():
        raise MaskmlError(f"point labels must be 1 (object) or 0 (background), got {labels!r}")
    if len(values) != count:
        raise MaskmlError(f"got {count} points but {len(values)} labels")
    return torch.from_numpy(values.astype(np.int64))


def _as_tensor(mask, what: str) -> torch.Tensor:
    """An H x W array of real numbers or booleans (numpy, torch or nested lists) as a tensor."""
    try:
        if isinstance(mask, np.ndarray):
            mask = torch.from_numpy(np.ascontiguousarray(mask))
        elif not isinstance(mask, torch.Tensor):
            mask = torch.as_tensor(np.asarray(mask))
    except (TypeError, ValueError, RuntimeError):
        raise MaskmlError(f"{what} must be an H x W array of numbers, got {type(mask).__name__}") from None
    if mask.ndim != 2:
        raise MaskmlError(f"{what} must be an H x W array, got shape {tuple(mask.shape)}")
    if mask.dtype.is_complex:
        raise MaskmlError(f"{what} must hold real numbers, got {mask.dtype}")
    if mask.dtype.is_floating_point and not bool(torch.isfinite(mask).all()):
        raise MaskmlError(f"{what} holds NaN or infinite values")
    return mask


def as_id_map(mask, size: tuple[int, int]) -> torch.Tensor:
    """An H x W map of object ids (0 = background) as int64, for a frame of size (H, W). Integers and
    booleans are ids; floats that are all whole numbers are ids too; other floats in [0, 1] are one
    object's probabilities, object 1 where >= 0.5 (as SAM 2 binarises a mask prompt)."""
    mask = _as_tensor(mask, "a mask")
    if tuple(mask.shape) != tuple(size):
        raise MaskmlError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the frame is {size[1]}x{size[0]}: "
                          f"give a mask of the frame's size")
    if mask.dtype.is_floating_point and not bool((mask == mask.round()).all()):
        low, high = float(mask.min()), float(mask.max())
        if low < 0 or high > 1:
            raise MaskmlError(f"the mask holds fractional values from {low:g} to {high:g}: give object ids (whole "
                              f"numbers, 0 = background) or one object's probabilities (0 to 1)")
        return (mask >= 0.5).long()
    mask = mask.long()
    if mask.numel() and int(mask.min()) < 0:
        raise MaskmlError(f"the mask holds {int(mask.min())}: object ids are positive integers (0 = background)")
    return mask


def as_object_mask(mask) -> torch.Tensor:
    """One object's H x W mask as float32: booleans or integers (nonzero = the object), or probabilities
    in [0, 1], kept as they are (SAM 2 binarises them at 0.5 when it resizes them)."""
    mask = _as_tensor(mask, "a mask")
    if not mask.dtype.is_floating_point:
        return (mask != 0).float()
    low, high = float(mask.min()), float(mask.max())
    if low < 0 or high > 1:
        raise MaskmlError(f"a mask for one object holds booleans, 0/1 or probabilities from 0 to 1, got values from "
                          f"{low:g} to {high:g}")
    return mask.float()


def frame_size(frame) -> tuple[int, int]:
    """(H, W) of an H x W x 3 frame (numpy array or tensor)."""
    shape = tuple(getattr(frame, "shape", ()))
    if len(shape) != 3 or shape[2] != 3:
        raise MaskmlError(f"a frame must be an H x W x 3 uint8 RGB array, got {shape or type(frame).__name__}")
    return shape[:2]


def check_frame_size(size: tuple[int, int], video_size: tuple[int, int] | None) -> None:
    """A tracker's frames share the size of its first one."""
    if video_size is not None and tuple(size) != tuple(video_size):
        raise MaskmlError(f"the frame is {size[1]}x{size[0]}, but this video's frames are "
                          f"{video_size[1]}x{video_size[0]}: give every frame of a video at one size, or call "
                          f"reset() to start another video")


# Memory one more tracked object takes, in bytes: (per pixel of the frame as the model sees it, fixed),
# from `python benchmarks/bench_object_memory.py` (2026-12-06, 2 threads, examples/judo at 854x480, default
# options; see there). Cutie runs its mask encoder and decoder on all objects of a frame at once, so each
# object adds to the peak: peak resident memory grew by 113 MB (cutie_small) and 100 MB (cutie_base) per
# object from 1 to 4 objects over 30 frames. Cutie works on the frame resized so its shorter side is at most
# max_internal_size (480), and those activations and its memories have that frame's area: a cost per pixel.
# SAM 2 works on one object after another, so what adds up is each object's state: its memory bank (up to
# keep_window + 1 frames of 64x64x64 bfloat16 memories, 256x256 logits and a pointer) measured at 13.5 MB
# (18 frames, 1 and 2 objects; the same whatever the frame size, as SAM 2 works at 1024x1024), plus the
# float32 logits and probabilities it returns at the frame's size, 8 bytes a pixel. (Its peak grew by 64 MB
# from 1 to 2 objects in that run, but SAM 2's peak varies by more than that between runs: bench_sam2.py
# read 1267 MB for 1 object and 1143 MB for 3.)
OBJECT_MEMORY = {  # model: (bytes per pixel, fixed bytes)
    "cutie_small": (113.0 * 2**20 / (480 * 854), 0),
    "cutie_base": (100.3 * 2**20 / (480 * 854), 0),
    "sam2.1_hiera_t": (8, 13.5 * 2**20),
}
# the other SAM 2 sizes differ in their image encoder, whose features are per frame, not per object: the
# per-object parts (memory attention, mask decoder, memory encoder) have the same sizes in all of them
MEASURED_FOR_FAMILY = {"cutie": "cutie_small", "sam2": "sam2.1_hiera_t"}


def object_memory(model_name: str | None, size: tuple[int, int]) -> float | None:
    """Bytes one more tracked object takes with this model on frames of (H, W), or None if unknown."""
    from maskml.zoo import get_entry

    if model_name is None:  # a model built outside the zoo
        return None
    entry = get_entry(model_name)
    measured = model_name if model_name in OBJECT_MEMORY else MEASURED_FOR_FAMILY.get(entry.family)
    if measured is None:
        return None
    per_pixel, fixed = OBJECT_MEMORY[measured]
    h, w = size
    if entry.family == "cutie":  # resized as VideoTracker does with the default max_internal_size
        scale = min(1.0, 480 / min(h, w))
        h, w = h * scale, w * scale
    return per_pixel * h * w + fixed


def check_mask_objects(present: list[int], tracked: list[int], tracker, size: tuple[int, int]) -> None:
    """The objects of a mask on a frame of (H, W), with those a tracker (with `max_objects` and `model`)
    already tracks, within its limit."""
    total = len(set(tracked).union(present))
    also = f", which with the {len(tracked)} tracked make {total} objects" if tracked else ""
    check_object_count(total, tracker.max_objects, f"the mask holds {len(present)} object ids{also}",
                       f"give {type(tracker).__name__}(model, max_objects={total})",
                       getattr(tracker.model, "model_name", None), size)


def check_max_objects(value) -> int:
    """A tracker's max_objects: a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise MaskmlError(f"max_objects must be a positive integer, got {value!r}")
    return int(value)


def check_object_count(count: int, limit: int, what: str, how_to_raise: str, model_name: str | None,
                       size: tuple[int, int]) -> None:
    """MaskmlError when `count` objects are more than `limit`: `what` gives them ("mask m.png holds 255
    object ids"), `how_to_raise` the option that allows more; the message estimates the memory they need."""
    if count <= limit:
        return
    per_object = object_memory(model_name, size)
    memory = "" if per_object is None else (
        f"; {count} objects would take about {count * per_object / 2**30:.1f} GB of memory with {model_name} on "
        f"{size[1]}x{size[0]} frames ({per_object / 2**20:.0f} MB each)")
    raise MaskmlError(f"{what}: more than the limit of {limit} objects{memory}. To track that many, {how_to_raise}; "
                      f"otherwise check that the mask is a map of object ids (0 = background, each object one id)")
