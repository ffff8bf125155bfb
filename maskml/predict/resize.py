"""Image resizing that reproduces Pillow's BILINEAR resize bit for bit, in torch.

SAM's official preprocessing resizes the uint8 image with Pillow. Matching it
exactly (not approximately) matters: ViT-B's embedding moves by up to 0.05 when
a float resize is used instead. Pillow resizes separably (horizontal pass first,
unless the height shrinks by more than twice as many pixels as the width: the
rule of Pillow >= 13, which the parity fixtures used), each pass a weighted sum with a triangle filter widened by the scale
when shrinking, weights quantised to 22 fractional bits and the result rounded
to uint8 after each pass. Integer arithmetic in int32 keeps this exact.
"""
from __future__ import annotations

import math

import torch

_PRECISION_BITS = 22  # 32 - 8 - 2, as in Pillow's 8-bit resampler


def _pillow_bilinear_taps(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each output index: input indices (out, K) and quantised int32 weights (out, K)."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = 1.0 * filter_scale  # the bilinear (triangle) filter has support 1
    taps = math.ceil(support) * 2 + 1
    index = torch.zeros(out_size, taps, dtype=torch.int64)
    weight = torch.zeros(out_size, taps, dtype=torch.int32)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        w = [max(0.0, 1.0 - abs((j - center + 0.5) / filter_scale)) for j in range(lo, hi)]
        total = sum(w)
        w = [x / total for x in w] if total != 0.0 else w
        q = [int(x * (1 << _PRECISION_BITS) + (0.5 if x >= 0 else -0.5)) for x in w]
        index[i, :hi - lo] = torch.arange(lo, hi)
        weight[i, :hi - lo] = torch.tensor(q, dtype=torch.int32)
    return index.to(device), weight.to(device)


def _resample_axis(image: torch.Tensor, out_size: int, axis: int) -> torch.Tensor:
    """One Pillow pass along `axis` of an (H, W, C) uint8 tensor."""
    in_size = image.shape[axis]
    index, weight = _pillow_bilinear_taps(in_size, out_size, image.device)
    x = image.to(torch.int32).movedim(axis, 0)  # (in, other, C)
    acc = torch.full((out_size, *x.shape[1:]), 1 << (_PRECISION_BITS - 1), dtype=torch.int32, device=image.device)
    for k in range(index.shape[1]):
        acc += x[index[:, k]] * weight[:, k].view(-1, 1, 1)
    out = (acc >> _PRECISION_BITS).clamp_(0, 255).to(torch.uint8)
    return out.movedim(0, axis)


def resize_bilinear_like_pillow(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, C) uint8 -> (h, w, C) uint8, equal to PIL Image.resize((w, h), Image.BILINEAR)."""
    h, w = size
    shrink_h, shrink_w = image.shape[0] - h, image.shape[1] - w
    axes = [(0, h), (1, w)] if shrink_h > 0 and shrink_h > 2 * shrink_w else [(1, w), (0, h)]
    for axis, length in axes:
        if image.shape[axis] != length:
            image = _resample_axis(image, length, axis)
    return image


def longest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """(h, w) with the longest side equal to `target`, rounded half up (SAM's ResizeLongestSide)."""
    scale = target * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)
