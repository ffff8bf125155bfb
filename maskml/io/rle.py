"""COCO run-length encoding of binary masks (the `segmentation` format of COCO annotations).

Runs are counted in column-major (Fortran) order and start with a background run,
which is 0 when the first pixel is foreground: a 2 x 2 mask [[0, 1], [1, 1]] is
counts [1, 3]. The compressed form is the string pycocotools writes (mask.encode,
frPyObjects): each count, from the fourth on as the difference to the count two
places back, in 5-bit groups, low first, with 0x20 as "more follows" and the sign in
0x10 of the last group, each group + 48 as an ASCII character.

    rles = encode_rle(masks)               # [{"size": [H, W], "counts": [ints]}, ...]
    compress_rle(rles[0])["counts"]        # e.g. "92203", as pycocotools writes it
    decode_rle(rle), rle_area(rle)         # either form
    encode_objects(ids)                    # [(object id, RLE)] of an H x W id map
    object_annotations(ids)                # one COCO annotation per object id of an H x W id map
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from maskml.errors import MaskmlError


def encode_rle(masks: torch.Tensor) -> list[dict]:
    """(N, H, W) or (H, W) bool -> [{"size": [H, W], "counts": [ints]}], one per mask (a list
    even for one mask, as pycocotools' encode of an H x W x N array)."""
    return [{"size": rle["size"], "counts": rle["counts"].tolist()} for rle in encode_rle_compact(masks)]


def encode_rle_compact(masks: torch.Tensor) -> list[dict]:
    """encode_rle with the counts in an int32 tensor: 4 bytes a run where a list of Python ints takes 8
    (counts up to 256, which Python shares) to 36, for RLEs kept by the thousand (the automatic
    generator's). Every function here takes both."""
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise MaskmlError(f"RLE encodes (H, W) or (N, H, W) masks, got shape {tuple(masks.shape)}")
    n, h, w = masks.shape
    if h * w == 0:
        return [{"size": [h, w], "counts": torch.zeros(1, dtype=torch.int32)} for _ in range(n)]  # as pycocotools
    masks = masks.bool()
    hw = h * w
    # Column-major order without transposing the masks (a full copy): run ends are where a pixel
    # differs from the one below it, or the last of a column from the first of the next.
    i, y, x = (masks[:, 1:, :] != masks[:, :-1, :]).nonzero(as_tuple=True)
    j, c = (masks[:, 0, 1:] != masks[:, -1, :-1]).nonzero(as_tuple=True)
    mask_ends = torch.arange(1, n + 1, device=masks.device) * hw
    ends = torch.cat([i * hw + x * h + y + 1, j * hw + (c + 1) * h, mask_ends]).sort().values
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])  # a mask's first run starts where the previous mask ended
    runs = (ends - starts).to(torch.int32).cpu()
    sizes = (torch.bincount(torch.cat([i, j]), minlength=n) + 1).tolist()
    first = masks[:, 0, 0].tolist()
    return [{"size": [h, w], "counts": F.pad(counts, (1, 0)) if first[k] else counts.clone()}  # each its own memory
            for k, counts in enumerate(runs.split(sizes))]


def decode_rle(rle: dict) -> torch.Tensor:
    """{"size": [H, W], "counts": ints, an int tensor or a COCO string} -> (H, W) bool."""
    h, w = rle["size"]
    counts = torch.as_tensor(_counts(rle), dtype=torch.int64)
    if (counts < 0).any() or int(counts.sum()) != h * w:
        raise MaskmlError(f"RLE counts cover {int(counts.sum())} pixels, but its size {h} x {w} has {h * w}: "
                          f"the RLE is corrupt or its size is wrong")
    values = torch.arange(len(counts)) % 2 == 1  # background, foreground, background, ...
    return torch.repeat_interleave(values, counts).reshape(w, h).T


def rle_area(rle: dict) -> int:
    """Foreground pixels, from the counts alone."""
    return int(sum(_counts(rle)[1::2]))


def encode_objects(ids: torch.Tensor) -> list[tuple[int, dict]]:
    """H x W object ids (0 = background) -> (id, RLE as encode_rle_compact gives it) for each id present,
    in increasing order."""
    pixels = torch.bincount(ids.reshape(-1).long())  # which ids are present, in one pass (unique() sorts)
    present = (pixels[1:].nonzero().reshape(-1) + 1).tolist()
    if not present:
        return []
    masks = ids[None] == torch.tensor(present, device=ids.device)[:, None, None]
    return list(zip(present, encode_rle_compact(masks)))


def object_annotations(ids: torch.Tensor) -> list[dict]:
    """H x W object ids -> one COCO annotation per id > 0, in increasing id order: category_id (the
    object id), segmentation (compressed RLE), area, bbox (x, y, width, height, inclusive of the last
    row and column as pycocotools' toBbox gives it: x1 - x0 + 1), iscrowd 0."""
    from maskml.ops.boxes import masks_to_boxes

    objects = encode_objects(ids)
    if not objects:
        return []
    boxes = masks_to_boxes(ids[None] == torch.tensor([obj for obj, _ in objects], device=ids.device)[:, None, None])
    annotations = []
    for (obj, rle), (x0, y0, x1, y1) in zip(objects, boxes.tolist()):
        annotations.append({"category_id": obj, "segmentation": compress_rle(rle), "area": rle_area(rle),
                            "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1], "iscrowd": 0})
    return annotations


def compress_rle(rle: dict) -> dict:
    """Uncompressed counts -> COCO compressed string counts (str, where pycocotools gives bytes)."""
    return {"size": list(rle["size"]), "counts": _counts_to_string(_counts(rle))}


def _counts(rle: dict) -> list[int]:
    counts = rle["counts"]
    if isinstance(counts, torch.Tensor):
        return counts.tolist()
    if isinstance(counts, (str, bytes)):
        return _string_to_counts(counts.decode() if isinstance(counts, bytes) else counts)
    return list(counts)


def _counts_to_string(counts: list[int]) -> str:
    chars = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: a negative difference ends at -1
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return "".join(chars)


def _string_to_counts(text: str) -> list[int]:
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        x = shift = 0
        more = True
        while more:
            if pos == len(text):
                raise MaskmlError(f"compressed RLE counts {text[:40]!r} end in the middle of a number")
            c = ord(text[pos]) - 48
            x |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                x |= -1 << shift  # sign-extend
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts
