"""Image resizing that reproduces Pillow's BILINEAR and BICUBIC resizes bit for bit, in torch.

SAM's official preprocessing resizes the uint8 image with Pillow's BILINEAR, SAM 2's
video predictor with Pillow's default BICUBIC. Matching them exactly (not
approximately) matters: ViT-B's embedding moves by up to 0.05 when a float resize
is used instead. Pillow resizes separably (horizontal pass first, unless the height
shrinks by more than twice as many pixels as the width: the rule of Pillow >= 13,
which the parity fixtures used), each pass a weighted sum with the filter widened
by the scale when shrinking, weights quantised to 22 fractional bits and the result
rounded and clipped to uint8 after each pass. Integer arithmetic in int32 keeps
this exact.
"""
from __future__ import annotations

import functools
import math

import torch

_PRECISION_BITS = 22  # 32 - 8 - 2, as in Pillow's 8-bit resampler


def _triangle(x: float) -> float:
    return max(0.0, 1.0 - abs(x))


def _cubic(x: float, a: float = -0.5) -> float:  # Keys' cubic convolution kernel, Pillow's constant a
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


FILTERS = {"bilinear": (_triangle, 1.0), "bicubic": (_cubic, 2.0)}  # kernel, support


@functools.lru_cache(maxsize=16)  # video frames repeat the same sizes
def _pillow_taps(in_size: int, out_size: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """For each output index: input indices (out, K) and quantised int32 weights (out, K)."""
    kernel, base_support = FILTERS[kind]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = base_support * filter_scale
    taps = math.ceil(support) * 2 + 1
    index = torch.zeros(out_size, taps, dtype=torch.int64)
    weight = torch.zeros(out_size, taps, dtype=torch.int32)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        w = [kernel((j - center + 0.5) / filter_scale) for j in range(lo, hi)]
        total = sum(w)
        w = [x / total for x in w] if total != 0.0 else w
        q = [int(x * (1 << _PRECISION_BITS) + (0.5 if x >= 0 else -0.5)) for x in w]
        index[i, :hi - lo] = torch.arange(lo, hi)
        weight[i, :hi - lo] = torch.tensor(q, dtype=torch.int32)
    return index, weight


def _resample_axis(image: torch.Tensor, out_size: int, axis: int, kind: str) -> torch.Tensor:
    """One Pillow pass along `axis` of an (H, W, C) uint8 tensor."""
    in_size = image.shape[axis]
    index, weight = (t.to(image.device) for t in _pillow_taps(in_size, out_size, kind))
    x = image.movedim(axis, 0).to(torch.int32, memory_format=torch.contiguous_format)  # (in, other, C)
    acc = torch.full((out_size, *x.shape[1:]), 1 << (_PRECISION_BITS - 1), dtype=torch.int32, device=image.device)
    for k in range(index.shape[1]):
        acc.add_(torch.index_select(x, 0, index[:, k]).mul_(weight[:, k].view(-1, 1, 1)))
    out = (acc >> _PRECISION_BITS).clamp_(0, 255).to(torch.uint8)
    return out.movedim(0, axis)


def resize_bilinear_like_pillow(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, C) uint8 -> (h, w, C) uint8, equal to PIL Image.resize((w, h), Image.BILINEAR)."""
    return resize_like_pillow(image, size, "bilinear")


def resize_like_pillow(image: torch.Tensor, size: tuple[int, int], kind: str = "bicubic") -> torch.Tensor:
    """(H, W, C) uint8 -> (h, w, C) uint8, equal to PIL Image.resize((w, h), BILINEAR or BICUBIC)."""
    h, w = size
    shrink_h, shrink_w = image.shape[0] - h, image.shape[1] - w
    axes = [(0, h), (1, w)] if shrink_h > 0 and shrink_h > 2 * shrink_w else [(1, w), (0, h)]
    for axis, length in axes:
        if image.shape[axis] != length:
            image = _resample_axis(image, length, axis, kind)
    return image


def longest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """(h, w) with the longest side equal to `target`, rounded half up (SAM's ResizeLongestSide)."""
    scale = target * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)
