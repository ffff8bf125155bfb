"""Position encodings of SAM 2: 2-D sine tables for feature maps, 1-D sine codes for
temporal distances, and axial rotary embeddings for memory attention."""
from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """DETR's sine position encoding of a feature grid: rows and columns numbered from 1, scaled to
    (0, 2*pi], each encoded by num_pos_feats/2 interleaved sin/cos channels; [rows | columns].
    Depends on the grid size only, so it is computed once per (size, device, dtype); the returned
    tensor is that shared cache (expanded over the batch): read it, do not write into it."""

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        assert num_pos_feats % 2 == 0
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self._cache: dict[tuple, torch.Tensor] = {}

    def _axis(self, n: int, device: torch.device) -> torch.Tensor:
        """(n, num_pos_feats / 2) encoding of positions 1..n, in float32 as in the official code."""
        half = self.num_pos_feats // 2
        t = torch.arange(1, n + 1, dtype=torch.float32, device=device)
        t = t / (t[-1] + 1e-6) * (2 * math.pi)
        i = torch.arange(half, dtype=torch.float32, device=device)
        angle = t[:, None] / self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / half)
        return torch.where(i % 2 == 0, angle.sin(), angle.cos())

    def _table(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        # built outside inference mode so the cached tensor also serves autograd callers
        with torch.inference_mode(False), torch.no_grad():
            rows = self._axis(h, device)[:, None, :].expand(h, w, -1)
            cols = self._axis(w, device)[None, :, :].expand(h, w, -1)
            return torch.cat([rows, cols], dim=-1).permute(2, 0, 1)[None].to(dtype).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features -> (B, num_pos_feats, H, W) encoding of their grid."""
        b, _, h, w = x.shape
        key = (h, w, x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = self._table(h, w, x.device, x.dtype)
        return self._cache[key].expand(b, -1, -1, -1)


def sine_code_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(..., ) positions -> (..., dim): [sin | cos] halves of the transformer's sinusoidal code."""
    half = dim // 2
    freq = torch.arange(half, dtype=torch.float32, device=positions.device)
    freq = temperature ** (2 * (freq // 2) / half)
    angles = positions.unsqueeze(-1) / freq
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def axial_rope_table(dim: int, width: int, height: int, theta: float = 10000.0,
                     device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines (width*height, dim // 2) of the rotation angles of a 2-D axial rotary embedding over a
    row-major grid: the first dim // 4 channel pairs turn with x, the next dim // 4 with y."""
    freq = 1.0 / (theta ** (torch.arange(0, dim, 4, device=device)[: dim // 4].float() / dim))
    index = torch.arange(width * height, dtype=torch.float32, device=device)
    x, y = index % width, torch.div(index, width, rounding_mode="floor")
    angles = torch.cat([torch.outer(x, freq), torch.outer(y, freq)], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, rotations: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate consecutive channel pairs (x[2i], x[2i+1]) of x (..., N, dim) by the angles of the table (cos, sin),
    each (n, dim // 2); N may be a multiple of n (memories of several frames share one grid). Real arithmetic
    (the complex product written out), so that exported graphs need no complex numbers."""
    cos, sin = rotations
    *lead, n, dim = x.shape
    pairs = x.float().reshape(*lead, n // cos.shape[0], cos.shape[0], dim // 2, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.reshape(x.shape).type_as(x)
