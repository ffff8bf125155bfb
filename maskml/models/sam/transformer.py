"""Two-way transformer of the SAM mask decoder: prompt tokens and image tokens attend
to each other in turn (shared by SAM and SAM 2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskml.models.common import MLP, MLPBlock, few_key_attention, few_query_attention, folds


class Attention(nn.Module):
    """Multi-head attention with an optional down-projected internal width."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1,
                 kv_in_dim: int | None = None) -> None:
        super().__init__()
        kv_in_dim = kv_in_dim or embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        assert self.internal_dim % num_heads == 0, "num_heads must divide the internal width"
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def project_q(self, q: torch.Tensor) -> torch.Tensor:
        return self._heads(self.q_proj(q))

    def project_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._heads(self.k_proj(k)), self._heads(self.v_proj(v))

    def forward(self, q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None,
                q_heads: torch.Tensor | None = None, kv_heads: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor:
        """q_heads / kv_heads: projections computed earlier (see TwoWayTransformer.image_cache); a batch of 1
        there is shared by every prompt of the batch."""
        q = self.project_q(q) if q_heads is None else q_heads
        k, v = self.project_kv(k, v) if kv_heads is None else kv_heads
        batch = max(q.shape[0], k.shape[0])
        q, k, v = q.expand(batch, -1, -1, -1), k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(batch, -1, self.internal_dim))

    def _projections(self):
        return [(m.weight, m.bias) for m in (self.q_proj, self.k_proj, self.v_proj, self.out_proj)]

    def few_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """forward(q, k, v) for a few queries q (B, T, C) and many keys k, v (1 or B, N, C); see
        maskml.models.common.few_query_attention."""
        if not folds(self.num_heads, q.shape[1], self.internal_dim):
            return self(q, k, v)
        qp, kp, vp, _ = self._projections()
        return self.out_proj(few_query_attention(q, k, v, qp, kp, vp, self.num_heads))

    def few_keys(self, q: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor,
                 q_heads: torch.Tensor | None = None) -> torch.Tensor:
        """forward(q, k, v, q_heads) for many queries q (1 or B, N, C) and a few keys k, v (B, T, C)."""
        if not folds(self.num_heads, k.shape[1], self.internal_dim):
            return self(q, k, v, q_heads=q_heads)
        return few_key_attention(q, k, v, *self._projections(), self.num_heads, q_heads=q_heads)


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image cross-attention, token MLP, image->token cross-attention."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int = 2048,
                 activation: type[nn.Module] = nn.ReLU, attention_downsample_rate: int = 2,
                 skip_first_layer_pe: bool = False, mlp_as_layers: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        # the same ReLU FFN; SAM 2 stores it as mlp.layers.{0,1}, SAM as mlp.lin{1,2}
        self.mlp = (MLP(embedding_dim, mlp_dim, embedding_dim, 2) if mlp_as_layers
                    else MLPBlock(embedding_dim, mlp_dim, activation))
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def image_cache(self, keys: torch.Tensor, key_pe: torch.Tensor) -> dict:
        """The projections of the image tokens, which do not depend on the prompt."""
        k = keys + key_pe
        return {"token_to_image": self.cross_attn_token_to_image.project_kv(k, keys),
                "image_to_token": self.cross_attn_image_to_token.project_q(k)}

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
                key_pe: torch.Tensor, cache: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q = queries + query_pe
        k = keys + key_pe if cache is None else None
        if cache:
            attn = self.cross_attn_token_to_image(q, None, None, kv_heads=cache["token_to_image"])
        else:
            attn = self.cross_attn_token_to_image.few_queries(q, k, keys)
        queries = self.norm2(queries + attn)
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        q_heads = cache["image_to_token"] if cache else None
        keys = self.norm4(keys + self.cross_attn_image_to_token.few_keys(k, q, queries, q_heads=q_heads))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int = 2, embedding_dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048,
                 activation: type[nn.Module] = nn.ReLU, attention_downsample_rate: int = 2,
                 mlp_as_layers: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, activation, attention_downsample_rate,
                                 skip_first_layer_pe=i == 0, mlp_as_layers=mlp_as_layers)
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def image_cache(self, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> dict:
        """Work of the first layer that depends on the image alone, for forward(cache=...): when every
        prompt of an image sees the same image tokens (no mask prompt), it is done once per image."""
        return self.layers[0].image_cache(image_embedding.flatten(2).transpose(1, 2), image_pe.flatten(2).transpose(1, 2))

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor,
                cache: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding, image_pe: (B or 1, C, H, W); point_embedding: (B, N, C); cache from image_cache()
        of this image embedding. Returns the updated tokens (B, N, C) and image tokens (B, HW, C)."""
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for i, layer in enumerate(self.layers):
            queries, keys = layer(queries, keys, point_embedding, key_pe, cache if i == 0 else None)
        attn = self.final_attn_token_to_image.few_queries(queries + point_embedding, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys
