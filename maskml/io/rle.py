"""COCO run-length encoding of binary masks (the `segmentation` format of COCO annotations).

Runs are counted in column-major (Fortran) order and start with a background run,
which is 0 when the first pixel is foreground. The compressed form is the string
pycocotools writes: each count (after the first two, as the difference to the count
two places back) in 5-bit groups with a continuation bit, offset into printable ASCII.
"""
from __future__ import annotations

import torch


def encode_rle(masks: torch.Tensor) -> list[dict]:
    """(N, H, W) or (H, W) bool -> [{"size": [H, W], "counts": [ints]}], one per mask."""
    if masks.ndim == 2:
        masks = masks[None]
    n, h, w = masks.shape
    flat = masks.transpose(1, 2).reshape(n, h * w)
    # positions where the value changes, per mask
    change = (flat[:, 1:] != flat[:, :-1]).nonzero()
    out = []
    for i in range(n):
        idx = change[change[:, 0] == i, 1] + 1
        bounds = torch.cat([idx.new_zeros(1), idx, idx.new_tensor([h * w])])
        counts = (bounds[1:] - bounds[:-1]).tolist()
        if flat[i, 0]:
            counts = [0] + counts
        out.append({"size": [h, w], "counts": counts})
    return out


def decode_rle(rle: dict) -> torch.Tensor:
    """{"size": [H, W], "counts": ints or COCO string} -> (H, W) bool."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = _string_to_counts(counts.decode() if isinstance(counts, bytes) else counts)
    counts = torch.as_tensor(counts, dtype=torch.int64)
    values = torch.arange(len(counts)) % 2 == 1
    flat = torch.repeat_interleave(values, counts)
    if flat.numel() != h * w:
        raise ValueError(f"RLE counts cover {flat.numel()} pixels, expected {h} x {w}")
    return flat.reshape(w, h).T


def rle_area(rle: dict) -> int:
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = _string_to_counts(counts.decode() if isinstance(counts, bytes) else counts)
    return int(sum(counts[1::2]))


def compress_rle(rle: dict) -> dict:
    """Uncompressed counts -> COCO compressed string counts."""
    return {"size": list(rle["size"]), "counts": _counts_to_string(rle["counts"])}


def _counts_to_string(counts: list[int]) -> str:
    chars = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative differences end at -1
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
            c = ord(text[pos]) - 48
            x |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                x |= -1 << shift
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts
