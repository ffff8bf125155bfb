"""ViT image encoder of SAM (ViT-B/L/H): windowed + global attention with decomposed
relative positions (MViTv2), then a conv neck down to 256 channels."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskml.models.common import LayerNorm2d, MLPBlock


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # B, H, W, C


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """(q_size, k_size, C) table of relative-position embeddings, resized if the grid changed."""
    length = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != length:
        rel_pos = F.interpolate(rel_pos.T[None], size=length, mode="linear")[0].T
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    index = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[index.long()]


class Attention(nn.Module):
    """Multi-head self-attention on a (B, H, W, C) grid, optionally with decomposed
    relative positions (MViTv2): the bias q·R_h[qy, ky] + q·R_w[qx, kx] is passed to
    scaled_dot_product_attention as an additive mask, which runs its fused kernel."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, use_rel_pos: bool = False,
                 input_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            assert input_size is not None, "relative positions need the input size"
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, HW, head_dim)
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            table_h = relative_position_table(h, h, self.rel_pos_h)  # (h, h, d)
            table_w = relative_position_table(w, w, self.rel_pos_w)  # (w, w, d)
            grid_q = q.reshape(b, self.num_heads, h, w, -1)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, table_h)
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, table_w)
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, self.num_heads, h * w, h * w)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(out)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * windows, window, window, C), zero-padding H and W up to the window."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c).transpose(2, 3)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int],
                       size: tuple[int, int]) -> torch.Tensor:
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1).transpose(2, 3)
    x = x.reshape(b, hp, wp, -1)
    return x[:, :h, :w] if (hp, wp) != (h, w) else x


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 use_rel_pos: bool = False, window_size: int = 0,
                 input_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos,
                              input_size if window_size == 0 else (window_size, window_size))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            size = x.shape[1:3]
            x, padded = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(x), self.window_size, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    def __init__(self, img_size: int = 1024, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, out_chans: int = 256, window_size: int = 14,
                 global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, use_rel_pos=True,
                  window_size=0 if i in global_attn_indexes else window_size, input_size=(grid, grid))
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
