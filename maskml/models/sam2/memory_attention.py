"""Memory attention: the current frame's features attend to themselves and to the memory bank
(spatial memories of earlier frames, then object-pointer tokens), with 2-D rotary positions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskml.models.common import capturing_graph, is_inference
from maskml.models.sam.transformer import Attention
from maskml.models.sam2.position_encoding import apply_rope, axial_rope_table


class RoPEAttention(Attention):
    """Attention whose queries and (spatial) keys are rotated by their position on the feature grid.
    The last `num_k_exclude_rope` keys (object pointers) are not rotated."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1, kv_in_dim: int | None = None,
                 rope_theta: float = 10000.0, feat_sizes: tuple[int, int] = (64, 64)) -> None:
        super().__init__(embedding_dim, num_heads, downsample_rate, kv_in_dim)
        self.rope_theta = rope_theta
        self.feat_sizes = feat_sizes
        self._tables: dict = {}

    def _rope(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        side = int(round(int(n) ** 0.5))  # queries cover a square grid, as in the official model (int(): traced sizes)
        key = (side, device)
        if key not in self._tables:
            # built outside inference mode so the cached table also serves training after an evaluation
            with torch.inference_mode(False), torch.no_grad():
                self._tables = {key: axial_rope_table(self.internal_dim // self.num_heads, side, side,
                                                      self.rope_theta, device)}
        return self._tables[key]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0) -> torch.Tensor:
        q = self.project_q(q)
        # memories are 64-dim and the heads 256: mixing the raw memory values and projecting the
        # mixture, (P m) W_v^T + b_v (rows of P sum to 1), equals P (m W_v^T + b_v) at a quarter of
        # the cost of the larger of the two products (inference and exported graphs)
        raw_values = (is_inference() or capturing_graph()) and v.shape[-1] < self.internal_dim // self.num_heads
        k = self._heads(self.k_proj(k))
        rotations = self._rope(q.shape[-2], q.device)
        q = apply_rope(q, rotations)
        num_rope = k.shape[-2] - num_k_exclude_rope
        if num_k_exclude_rope:
            k = torch.cat([apply_rope(k[:, :, :num_rope], rotations), k[:, :, num_rope:]], dim=2)
        else:
            k = apply_rope(k, rotations)
        if raw_values:
            out = self._attend_raw_values(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, self._heads(self.v_proj(v)))
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))

    def _attend_raw_values(self, q: torch.Tensor, k: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v_proj(memory) for q, k (B, H, N, d), memory (B, M, C_kv): the
        affinities in chunks of queries (a few tens of MB each), then one projection of the mixture."""
        b, heads, n, d = q.shape
        values = memory.unsqueeze(1)
        keys_t = k.transpose(-1, -2)
        weight = self.v_proj.weight.view(heads, d, -1)
        if capturing_graph():  # one product: a traced graph does not record writes into slices
            mixed = ((q * d ** -0.5) @ keys_t).softmax(-1) @ values
            return mixed @ weight.transpose(1, 2) + self.v_proj.bias.view(heads, 1, d)
        mixed = q.new_empty(b, heads, n, memory.shape[-1])
        chunk = max(64, (1 << 24) // (b * heads * k.shape[-2]))
        for start in range(0, n, chunk):
            scores = (q[:, :, start:start + chunk] * d ** -0.5) @ keys_t
            torch.matmul(scores.softmax(-1), values, out=mixed[:, :, start:start + chunk])
        return mixed @ weight.transpose(1, 2) + self.v_proj.bias.view(heads, 1, d)


class MemoryAttentionLayer(nn.Module):
    """Pre-norm: self-attention, cross-attention to the memory (keys carry their positions), FFN."""

    def __init__(self, d_model: int = 256, dim_feedforward: int = 2048, mem_dim: int = 64) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(d_model, num_heads=1)
        self.cross_attn_image = RoPEAttention(d_model, num_heads=1, kv_in_dim=mem_dim)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor,
                num_pointer_tokens: int) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h)
        h = self.norm2(x)
        x = x + self.cross_attn_image(h, memory + memory_pos, memory, num_k_exclude_rope=num_pointer_tokens)
        return x + self.linear2(F.relu(self.linear1(self.norm3(x))))


class MemoryAttention(nn.Module):
    def __init__(self, d_model: int = 256, num_layers: int = 4, dim_feedforward: int = 2048, mem_dim: int = 64) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(d_model, dim_feedforward, mem_dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor,
                num_pointer_tokens: int = 0) -> torch.Tensor:
        """x, pos (B, HW, C) current features; memory, memory_pos (B, M, mem_dim), the last
        num_pointer_tokens of them object pointers -> (B, HW, C)."""
        x = x + 0.1 * pos
        for layer in self.layers:
            x = layer(x, memory, memory_pos, num_pointer_tokens)
        return self.norm(x)
