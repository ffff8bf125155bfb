"""Hiera, the trunk of SAM 2's image encoder (Ryali et al. 2023, with the windowed position
embedding of Bolya et al. 2023): a 7x7 stride-4 patch embedding, then four stages of transformer
blocks. The first block of stages 2-4 max-pools its queries and its shortcut 2x2, halving the
resolution while doubling width and heads. Blocks attend inside non-overlapping windows (the first
block of a stage still uses the previous stage's window, which the pooled queries shrink to half),
a few chosen blocks attend globally.

(B, 3, H, W) -> [stride 4, 8, 16, 32] features, each (B, C_i, H/s, W/s) in channels-last memory.
Tokens travel as (B, H, W, C). Windows are cut (one copy) from the normalised input, before the
qkv projection, which is the narrowest tensor to copy; where the image does not fill the last
windows they are zero-padded as in the original, so padded keys and values are the projection's
bias and take part in the attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskml.models.common import MLP, InferenceCache, gelu_inplace, is_inference, window_partition, window_unpartition


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) of any strides -> (B, H/2, W/2, C): max over 2x2 cells (stride 2, odd edges
    dropped), read straight from the strided views (a strided amax is several times slower)."""
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    top = torch.maximum(x[:, 0:h:2, 0:w:2], x[:, 0:h:2, 1:w:2])
    return torch.maximum(top, torch.maximum(x[:, 1:h:2, 0:w:2], x[:, 1:h:2, 1:w:2]))


class MultiScaleAttention(nn.Module):
    """Self-attention over windows of (B, H, W, C) tokens (window 0: the whole image); with
    `q_pool`, queries are max-pooled 2x2 (inside each window), so the output has half the resolution."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: bool) -> None:
        super().__init__()
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor, window: int) -> torch.Tensor:
        b, h, w, _ = x.shape
        wh, ww = (window, window) if window else (h, w)
        tokens = window_partition(x, window).view(-1, wh, ww, x.shape[-1]) if window else x
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)  # each (windows, wh, ww, C), heads inside C
        if self.q_pool:
            q = max_pool_2x2(q)
        qh, qw = q.shape[1:3]
        # (windows, tokens, heads, head_dim) seen as (windows, heads, tokens, head_dim): no copies
        q, k, v = (t.flatten(1, 2).unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)  # (windows, tokens, C)
        if window:
            out = window_unpartition(out, qh, b, h * qh // wh, w * qw // ww)
        else:
            out = out.view(b, qh, qw, -1)
        return self.proj(out)


class MultiScaleBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, num_heads: int, window_size: int, q_pool: bool,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.window_size = window_size
        self.q_pool = q_pool
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, 2, act=gelu_inplace)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H', W', dim_out); H' = H/2 with q_pool."""
        y = self.norm1(x)
        shortcut = x
        if self.proj is not None:  # the shortcut is widened (and pooled) from the normalised input
            shortcut = self.proj(y)
            if self.q_pool:
                shortcut = max_pool_2x2(shortcut)
        x = self.attn(y, self.window_size)
        x = x.add_(shortcut) if is_inference() else x + shortcut
        y = self.mlp(self.norm2(x))
        return y.add_(x) if is_inference() else y + x


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/4, W/4, C), contiguous (channels-last convolution)."""
        return self.proj(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)


class Hiera(InferenceCache):
    """Keys as in the official file (`image_encoder.trunk.*` without the prefix). The position
    embedding (bicubic-resized `pos_embed` + tiled `pos_embed_window`) is cached per input size
    for inference; see InferenceCache for when it is rebuilt."""

    def __init__(self, embed_dim: int = 96, num_heads: int = 1, stages: tuple[int, ...] = (2, 3, 16, 3),
                 global_att_blocks: tuple[int, ...] = (12, 16, 20),
                 window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
                 window_spec: tuple[int, ...] = (8, 4, 14, 7), q_pool: int = 3,
                 dim_mul: float = 2.0, head_mul: float = 2.0) -> None:
        super().__init__()
        assert len(stages) == len(window_spec)
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))
        self.blocks = nn.ModuleList()
        dim, stage = embed_dim, 0
        for i in range(sum(stages)):
            # a stage's first block keeps the previous stage's window (its queries are pooled into the new one)
            window = 0 if i in global_att_blocks else window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out, num_heads, stage = int(dim * dim_mul), int(num_heads * head_mul), stage + 1
            self.blocks.append(MultiScaleBlock(dim, dim_out, num_heads, window, q_pool=i in pool_blocks))
            dim = dim_out
        self.channel_list = [self.blocks[i].attn.dim_out for i in reversed(self.stage_ends)]

    def _position_embedding(self, h: int, w: int) -> torch.Tensor:
        window = self.pos_embed_window
        wh, ww = window.shape[-2:]
        if h % wh or w % ww:
            raise ValueError(f"Hiera needs a patch grid that is a multiple of {wh}x{ww} "
                             f"(input sides a multiple of {4 * wh}), got {h}x{w} patches")
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic", align_corners=False)
        pos = pos + window.tile(1, 1, h // wh, w // ww)
        return pos.permute(0, 2, 3, 1).contiguous()  # (1, H, W, C)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        h, w = x.shape[1:3]
        pos = self.derived((self.pos_embed, self.pos_embed_window), lambda: self._position_embedding(h, w),
                           key=(h, w))
        x = x.add_(pos) if is_inference() else x + pos
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                features.append(x.permute(0, 3, 1, 2))
        return features
