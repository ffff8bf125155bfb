"""TinyViT-5M, MobileSAM's image encoder (Wu et al. 2022; Zhang et al. 2023): a convolutional
stage of MBConv blocks at 1/4 resolution, three stages of windowed attention with a learned bias
per head and relative offset, each followed by a depthwise 3x3 convolution and an MLP, and SAM's
neck. (B, 3, 1024, 1024) -> (B, 256, 64, 64).

Activations travel as (B, H, W, C) tensors: the token layout of the attention stages and, seen
through `.permute(0, 3, 1, 2)`, the channels-last layout oneDNN convolves fastest. Inference (eval
mode, no autograd) runs BatchNorm folded into its convolution, the bias table gathered once,
attention through scaled_dot_product_attention and activations in place; see `InferenceCache` for when
the cached tensors are rebuilt (never stale after load_state_dict).
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from maskml.models.common import (ConvBNCache, InferenceCache, add_inplace, capturing_graph, ceil_div, gelu_inplace, is_inference,
                                  window_partition, window_regions, window_unpartition)


class Conv2d_BN(ConvBNCache):
    """Bias-free convolution + BatchNorm (keys `c.*`, `bn.*`) on (B, H, W, C) tensors."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)

    def conv_bn_pairs(self):
        return [(self.c, self.bn)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_bn(0, x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # NCHW view of channels-last memory


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: 1/4 resolution."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        # nn.GELU() only keeps the official indices (seq.0, seq.2) of the weights
        self.seq = nn.Sequential(Conv2d_BN(in_chans, embed_dim // 2, 3, 2, 1), nn.GELU(),
                                 Conv2d_BN(embed_dim // 2, embed_dim, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, H/4, W/4, embed_dim)."""
        x = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        return self.seq[2](gelu_inplace(self.seq[0](x)))


class MBConv(nn.Module):
    """Inverted residual (MobileNetV2): 1x1 expand, 3x3 depthwise, 1x1 project, + input, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2d_BN(dim, hidden)
        self.conv2 = Conv2d_BN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = Conv2d_BN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(gelu_inplace(self.conv2(gelu_inplace(self.conv1(x)))))
        return gelu_inplace(add_inplace(y, x))


class PatchMerging(nn.Module):
    """1x1, 3x3 depthwise, 1x1 between stages. MobileSAM keeps 64x64 tokens into the last stage:
    its depthwise convolution has stride 1 when the output width is one of TinyViT's last-stage
    widths (320, 448, 576), stride 2 otherwise."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv1 = Conv2d_BN(dim, out_dim)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(gelu_inplace(self.conv2(gelu_inplace(self.conv1(x)))))


class ConvLayer(nn.Module):
    def __init__(self, dim: int, depth: int, out_dim: int, expand_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class Attention(InferenceCache):
    """Multi-head self-attention inside a window, plus a learned bias per head and per (|dy|, |dx|)
    offset between two of its positions (LeViT's attention bias)."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * key_dim * num_heads)
        self.proj = nn.Linear(key_dim * num_heads, dim)
        positions = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets: dict[tuple[int, int], int] = {}  # numbered in order of first appearance, as in the weights
        index = [offsets.setdefault((abs(p[0] - q[0]), abs(p[1] - q[1])), len(offsets))
                 for p in positions for q in positions]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(index).view(len(positions), len(positions)),
                             persistent=False)

    def _bias(self) -> torch.Tensor:
        return self.attention_biases[:, self.attention_bias_idxs][None]  # 4-D: SDPA's fused kernel takes it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(windows, N, C) -> (windows, N, C)."""
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.key_dim).transpose(1, 2)
        q, k, v = qkv.split(self.key_dim, dim=-1)  # per head: [q | k | v]
        bias = self.derived((self.attention_biases, self.attention_bias_idxs), self._bias)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale key_dim ** -0.5
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_inplace(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """x + attention over ws x ws windows, a depthwise 3x3 convolution, x + MLP. An image that is
    not a whole number of windows is zero-padded at the bottom/right; as in the original, padded
    positions take part as keys (after LayerNorm they are the norm's bias, not zeros)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, dim // num_heads, num_heads, (window_size, window_size))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2d_BN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        ws = self.window_size
        nh, nw = ceil_div(h, ws), ceil_div(w, ws)
        windows = self.attn(window_partition(x, ws))
        if capturing_graph():
            return self._local_conv_and_mlp(x + window_unpartition(windows, ws, b, h, w))
        out = windows.view(b, nh, nw, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
        regions = list(window_regions(b, h, w, c, ws))
        # x + attention, read back from the window grid in the same pass
        y = torch.empty_like(x)
        for image, window, shape in regions:
            if is_inference():
                torch.add(x[image].view(shape), out[window], out=y[image].view(shape))
            else:  # out= records no graph
                y[image].view(shape).copy_(x[image].view(shape) + out[window])
        return self._local_conv_and_mlp(y)

    def _local_conv_and_mlp(self, y: torch.Tensor) -> torch.Tensor:
        y = self.local_conv(y)
        z = self.mlp(y)
        return add_inplace(z, y)


class BasicLayer(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 local_conv_size: int, out_dim: int | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size)
                                    for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """MobileSAM's image encoder. The ImageNet classifier of TinyViT (`norm_head`, `head`) is not
    built: SAM never uses it (the zoo drops its tensors from the released file)."""

    def __init__(self, img_size: int = 1024, in_chans: int = 3, embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2),
                 num_heads=(2, 4, 5, 10), window_sizes=(7, 7, 14, 7), mlp_ratio: float = 4.0,
                 mbconv_expand_ratio: float = 4.0, local_conv_size: int = 3, out_chans: int = 256) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        self.layers = nn.ModuleList([ConvLayer(embed_dims[0], depths[0], embed_dims[1], mbconv_expand_ratio)])
        for i in range(1, len(depths)):
            out_dim = embed_dims[i + 1] if i + 1 < len(depths) else None
            self.layers.append(BasicLayer(embed_dims[i], depths[i], num_heads[i], window_sizes[i], mlp_ratio,
                                          local_conv_size, out_dim))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            nn.LayerNorm(out_chans, eps=1e-6),  # SAM's LayerNorm2d: over channels, same keys
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            nn.LayerNorm(out_chans, eps=1e-6),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised image -> (B, 256, H/16, W/16) (channels-last memory)."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        conv1, norm1, conv2, norm2 = self.neck
        x = norm1(F.conv2d(x.permute(0, 3, 1, 2), conv1.weight).permute(0, 2, 3, 1))
        x = norm2(F.conv2d(x.permute(0, 3, 1, 2), conv2.weight, padding=1).permute(0, 2, 3, 1))
        return x.permute(0, 3, 1, 2)
