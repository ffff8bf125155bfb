"""3x3 convolutions as Winograd F(2x2, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural
Networks", CVPR 2016), for CPU inference on small feature maps with many channels.

Why: on CPUs without AVX-512, torch's float32 convolutions run as oneDNN's direct convolution. Winograd
computes each 2x2 output tile from a 4x4 input tile with 16 multiplications per channel pair instead of 36:
the 16 products are batched matrix products of (tiles x C_in) by (C_in x C_out), the transforms before and
after them are sums of strided slices. It wins when the products are large and the transformed tiles fit
in the cache: Cutie's stride-16 features (30 x 54 at 480p, 256 to 768 channels); oneDNN stays faster on large
maps and few channels (`benchmarks/bench_winograd.py` prints both, per shape). Its
rounding error is no larger than the direct convolution's (same table). Same parameters, same function: the
module only chooses how to compute it.

MASKML_WINOGRAD=0 in the environment (or `winograd.ENABLED = False`) turns it off.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F

ENABLED = os.environ.get("MASKML_WINOGRAD", "1") != "0"
MAX_PIXELS = 64 * 64  # larger maps: the 4x-expanded tiles leave the cache and oneDNN is as fast
MIN_CHANNELS = 128  # fewer input or output channels: the batched products are too thin
MIN_CHANNEL_PRODUCT = 256 * 128


def applies(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups: int) -> bool:
    """Whether conv2d(x, weight, stride=..., ...) runs as Winograd: a float32 CPU inference (no autograd graph)
    of a dense 3x3, stride-1, padding-1 convolution of a small map with enough channels. Graphs captured for
    another runtime (tracing, ONNX export, torch.compile) keep the plain convolution, which they implement
    their own way."""
    # most convolutions called are not 3x3: that test first keeps this cheap on their path (a weight's shape
    # is fixed, so tracing sees no test on data before the mode checks below)
    if (weight.shape[-2:] != (3, 3) or not ENABLED or torch.is_grad_enabled() or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()):
        return False
    out_channels, in_channels = weight.shape[:2]
    return (x.dim() == 4 and x.device.type == "cpu" and x.dtype == torch.float32 and tuple(stride) == (1, 1)
            and tuple(padding) == (1, 1) and tuple(dilation) == (1, 1) and groups == 1
            and x.shape[-2] * x.shape[-1] <= MAX_PIXELS and min(in_channels, out_channels) >= MIN_CHANNELS
            and in_channels * out_channels >= MIN_CHANNEL_PRODUCT)


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> G g G^T for every channel pair, as (16, C_in, C_out); index 4 * row + column."""
    def g_times(t: torch.Tensor, dim: int) -> torch.Tensor:  # G = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]
        g0, g1, g2 = t.unbind(dim)
        return torch.stack([g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2])

    rows = g_times(weight, 2)  # (4, C_out, C_in, 3)
    tiles = g_times(rows, 3).transpose(0, 1)  # (4 rows, 4 columns, C_out, C_in)
    return tiles.flatten(0, 1).transpose(1, 2).contiguous()


def _input_transform(d0, d1, d2, d3, out: torch.Tensor) -> None:
    """B^T d along one axis, B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]; out[i] = row i."""
    torch.sub(d0, d2, out=out[0])
    torch.add(d1, d2, out=out[1])
    torch.sub(d2, d1, out=out[2])
    torch.sub(d1, d3, out=out[3])


def _output_transform(m0, m1, m2, m3, out0: torch.Tensor, out1: torch.Tensor) -> None:
    """A^T m along one axis, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]."""
    torch.add(m0, m1, out=out0).add_(m2)
    torch.sub(m1, m2, out=out1).sub_(m3)


def conv3x3(x: torch.Tensor, transformed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv2d(x, weight, bias, padding=1) for (N, C_in, H, W) x, given transform_weight(weight). The result has
    x's memory format (channels-last in, channels-last out; else contiguous), as F.conv2d's does."""
    n, c, h, w = x.shape
    k = transformed.shape[-1]
    th, tw = (h + 1) // 2, (w + 1) // 2  # output tiles; odd sizes compute one row / column more, then crop
    # channels last from here on, so each tile's channels are one row of the products
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 2 * tw + 1 - w, 1, 2 * th + 1 - h))  # (N, 2th+2, 2tw+2, C)
    out = x.new_empty(n, th, 2, tw, 2, k)
    rows = x.new_empty(4, th, 2 * tw + 2, c)
    tiles = x.new_empty(4, 4, th, tw, c)
    products = x.new_empty(16, th * tw, k)
    half = x.new_empty(2, 4, th, tw, k)
    for b in range(n):  # one image at a time: its tiles stay in the cache
        p = padded[b]
        _input_transform(p[0:2 * th:2], p[1:2 * th + 1:2], p[2::2], p[3::2], rows)
        _input_transform(rows[:, :, 0:2 * tw:2], rows[:, :, 1:2 * tw + 1:2], rows[:, :, 2::2], rows[:, :, 3::2],
                         tiles.transpose(0, 1))
        torch.bmm(tiles.view(16, -1, c), transformed, out=products)
        m = products.view(4, 4, th, tw, k)
        _output_transform(m[0], m[1], m[2], m[3], half[0], half[1])
        o = out[b]
        for i in range(2):
            _output_transform(half[i, 0], half[i, 1], half[i, 2], half[i, 3], o[:, i, :, 0], o[:, i, :, 1])
    y = out.view(n, 2 * th, 2 * tw, k)
    if bias is not None:
        y += bias
    y = y[:, :h, :w].permute(0, 3, 1, 2)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return y.contiguous(memory_format=torch.channels_last)  # a no-op unless cropped
    return y.contiguous()


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation, groups: int,
           transformed: Callable[[], torch.Tensor]) -> torch.Tensor:
    """F.conv2d, as Winograd where `applies`; transformed() gives transform_weight(weight), cached by the caller."""
    if applies(x, weight, stride, padding, dilation, groups):
        return conv3x3(x, transformed(), bias)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
