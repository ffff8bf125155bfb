"""Position encodings of SAM 2: 2-D sine tables for feature maps, 1-D sine codes for
temporal distances, and axial rotary embeddings for memory attention."""
from __future__ import annotations

import math

import torch


def sine_table(height: int, width: int, channels: int, temperature: float = 10000.0,
               device: torch.device | str | None = None) -> torch.Tensor:
    """(1, channels, H, W) normalised sine/cosine encoding of the pixel grid (DETR style): the first half
    of the channels encodes y, the second x; positions run 1..n, scaled to (0, 2*pi]."""
    half = channels // 2
    ys = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    xs = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    ys = ys / (ys[-1] + 1e-6) * (2 * math.pi)
    xs = xs / (xs[-1] + 1e-6) * (2 * math.pi)
    freq = torch.arange(half, dtype=torch.float32, device=device)
    freq = temperature ** (2 * (freq // 2) / half)

    def encode(pos: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, half), sin on even channels, cos on odd
        angles = pos[:, None] / freq
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=2).flatten(1)

    pos_y = encode(ys)[:, None, :].expand(height, width, half)
    pos_x = encode(xs)[None, :, :].expand(height, width, half)
    return torch.cat([pos_y, pos_x], dim=2).permute(2, 0, 1).unsqueeze(0).contiguous()


def sine_code_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(..., ) positions -> (..., dim): [sin | cos] halves of the transformer's sinusoidal code."""
    half = dim // 2
    freq = torch.arange(half, dtype=torch.float32, device=positions.device)
    freq = temperature ** (2 * (freq // 2) / half)
    angles = positions.unsqueeze(-1) / freq
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def axial_rope_table(dim: int, width: int, height: int, theta: float = 10000.0,
                     device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (width*height, dim // 2) of a 2-D axial rotary embedding over a row-major grid: the first
    dim // 4 rotation pairs turn with x, the next dim // 4 with y."""
    freq = 1.0 / (theta ** (torch.arange(0, dim, 4, device=device)[: dim // 4].float() / dim))
    index = torch.arange(width * height, dtype=torch.float32, device=device)
    x, y = index % width, torch.div(index, width, rounding_mode="floor")
    angles = torch.cat([torch.outer(x, freq), torch.outer(y, freq)], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs (x[2i], x[2i+1]) of x (..., N, dim) by the angles of the table
    (n, dim // 2); a table shorter than N is repeated along N (memories of several frames)."""
    n = x.shape[-2]
    if cos.shape[0] != n:
        repeat = n // cos.shape[0]
        cos, sin = cos.repeat(repeat, 1), sin.repeat(repeat, 1)
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)
