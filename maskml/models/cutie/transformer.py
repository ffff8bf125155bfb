"""Cutie's object transformer (queries read from pixels, pixels read from queries, with masked
attention from intermediate mask predictions), the object summariser and their positional encoding."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskml.models.common import add_inplace, few_key_attention, few_query_attention, folds
from maskml.models.cutie.modules import CAResBlock, GConv2d, downsample_area


def aggregate(prob: torch.Tensor, dim: int) -> torch.Tensor:
    """Object probabilities -> logits of [background, objects] (float32 clamp as the original)."""
    with_bg = torch.cat([torch.prod(1 - prob, dim=dim, keepdim=True), prob], dim)
    with_bg = with_bg.clamp(1e-7, 1 - 1e-7)
    return torch.log(with_bg / (1 - with_bg))


class PositionalEncoding(nn.Module):
    """2-D sine/cosine encoding; positions normalised to [0, scale]. inv_freq is a persistent
    buffer and comes from the checkpoint."""

    def __init__(self, dim: int, scale: float, temperature: float) -> None:
        super().__init__()
        self.dim = (dim + 3) // 4 * 2
        self.scale = scale
        self.register_buffer("inv_freq", 1.0 / temperature ** (torch.arange(0, self.dim, 2).float() / self.dim))

    def forward(self, h: int, w: int) -> torch.Tensor:
        """(h, w, 2 * dim): x encoding then y encoding, sin and cos interleaved."""
        device = self.inv_freq.device
        pos_y = torch.arange(h, device=device, dtype=self.inv_freq.dtype)
        pos_x = torch.arange(w, device=device, dtype=self.inv_freq.dtype)
        pos_y = pos_y / (pos_y[-1] + 1e-6) * self.scale
        pos_x = pos_x / (pos_x[-1] + 1e-6) * self.scale
        emb_y = torch.stack([(pos_y[:, None] * self.inv_freq).sin(), (pos_y[:, None] * self.inv_freq).cos()], -1)
        emb_x = torch.stack([(pos_x[:, None] * self.inv_freq).sin(), (pos_x[:, None] * self.inv_freq).cos()], -1)
        emb_x, emb_y = torch.broadcast_tensors(emb_x.flatten(-2)[None], emb_y.flatten(-2)[:, None])
        return torch.cat([emb_x, emb_y], dim=-1)


class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention's parameters (in_proj_weight/bias, out_proj), batch first, on SDPA."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        # nn.MultiheadAttention's initialisation (a model built without a checkpoint, as for training)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                blocked: torch.Tensor | None = None) -> torch.Tensor:
        """blocked: (B * heads, Lq, Lk) bool, True where attention is not allowed."""
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        b = q.shape[0]
        projections = (wq, bq), (wk, bk), (wv, bv)
        dim = wq.shape[0]
        # the 16 object queries read from every pixel and every pixel from them: regrouped around
        # the queries, the pixels are never projected (maskml.models.common.few_query_attention)
        if k.shape[1] > q.shape[1] and folds(self.num_heads, q.shape[1], dim):
            return self.out_proj(few_query_attention(q, k, v, *projections, self.num_heads, blocked))
        if q.shape[1] > k.shape[1] and blocked is None and folds(self.num_heads, k.shape[1], dim):
            out_proj = (self.out_proj.weight, self.out_proj.bias)
            return few_key_attention(q, k, v, *projections, out_proj, self.num_heads)

        def heads(x, w, bias):
            x = F.linear(x, w, bias)
            return x.view(b, x.shape[1], self.num_heads, -1).transpose(1, 2)

        mask = None if blocked is None else ~blocked.view(b, self.num_heads, *blocked.shape[1:])
        out = F.scaled_dot_product_attention(heads(q, wq, bq), heads(k, wk, bk), heads(v, wv, bv), attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, q.shape[1], -1))


class CrossAttention(nn.Module):
    """Pre-norm residual cross-attention of x to mem; positional encodings added to queries and keys."""

    def __init__(self, dim: int, num_heads: int, norm: bool = True) -> None:
        super().__init__()
        self.cross_attn = MultiheadAttention(dim, num_heads)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x, x_pe, mem_with_pe, mem, blocked=None, x_with_pe=None):
        """mem_with_pe: mem plus its positional encoding; x_with_pe: x plus its encoding, when the caller
        has that sum already (the pixels' sum serves as keys of one attention and queries of the
        other); only without the norm, which comes before the encoding is added."""
        x = self.norm(x)
        q = x + x_pe if x_with_pe is None else x_with_pe
        return add_inplace(self.cross_attn(q, mem_with_pe, mem, blocked), x)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, pe):
        x = self.norm(x)
        q = x + pe
        return x + self.self_attn(q, q, x)


class FFN(nn.Module):
    def __init__(self, dim: int, ff_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ff_dim)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return x + self.linear2(F.relu(self.linear1(self.norm(x))))


class PixelFFN(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = CAResBlock(dim, dim)

    def forward(self, pixel_flat: torch.Tensor, b: int, n: int, h: int, w: int) -> torch.Tensor:
        x = pixel_flat.view(b * n, h, w, -1).permute(0, 3, 1, 2)
        x = self.conv(x)
        return x.view(b, n, -1, h, w)


class QueryTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, ff_dim: int) -> None:
        super().__init__()
        self.read_from_pixel = CrossAttention(dim, num_heads)
        self.self_attn = SelfAttention(dim, num_heads)
        self.ffn = FFN(dim, ff_dim)
        self.read_from_query = CrossAttention(dim, num_heads, norm=False)
        self.pixel_ffn = PixelFFN(dim)

    def forward(self, query, pixel, query_pe, pixel_pe, blocked):
        b, n, _, h, w = pixel.shape
        pixel_flat = pixel.flatten(3, 4).flatten(0, 1).transpose(1, 2)
        pixel_with_pe = pixel_flat + pixel_pe
        query = self.read_from_pixel(query, query_pe, pixel_with_pe, pixel_flat, blocked)
        query = self.ffn(self.self_attn(query, query_pe))
        pixel_flat = self.read_from_query(pixel_flat, None, query + query_pe, query, x_with_pe=pixel_with_pe)
        return query, self.pixel_ffn(pixel_flat, b, n, h, w)


class QueryTransformer(nn.Module):
    def __init__(self, value_dim: int, embed_dim: int, num_heads: int, num_blocks: int, num_queries: int,
                 ff_dim: int, pe_scale: float, pe_temperature: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_queries = num_queries
        self.embed_dim = embed_dim
        self.query_init = nn.Embedding(num_queries, embed_dim)
        self.query_emb = nn.Embedding(num_queries, embed_dim)
        self.summary_to_query_init = nn.Linear(embed_dim, embed_dim)
        self.summary_to_query_emb = nn.Linear(embed_dim, embed_dim)
        self.pixel_init_proj = GConv2d(embed_dim, embed_dim, 1)
        self.pixel_emb_proj = GConv2d(embed_dim, embed_dim, 1)
        self.spatial_pe = PositionalEncoding(embed_dim, pe_scale, pe_temperature)
        self.blocks = nn.ModuleList(QueryTransformerBlock(embed_dim, num_heads, ff_dim) for _ in range(num_blocks))
        self.mask_pred = nn.ModuleList(nn.Sequential(nn.ReLU(), GConv2d(embed_dim, 1, 1)) for _ in range(num_blocks + 1))

    def forward(self, pixel: torch.Tensor, obj_summaries: torch.Tensor, selector: torch.Tensor | None = None,
                aux_logits: list | None = None):
        """pixel (B, N, C, H, W); obj_summaries (B, N, Q, C + 1): summed summaries, last channel the area.
        aux_logits: a list that receives each level's mask logits (B, N, H, W), all num_blocks + 1 of them
        (training's auxiliary loss)."""
        b, n, _, h, w = pixel.shape
        summaries = obj_summaries.reshape(b * n, self.num_queries, self.embed_dim + 1)
        obj_values = summaries[..., :-1] / (summaries[..., -1:] + 0.0001)
        query = self.query_init.weight.unsqueeze(0) + self.summary_to_query_init(obj_values)
        query_emb = self.query_emb.weight.unsqueeze(0) + self.summary_to_query_emb(obj_values)
        pixel_emb = self.pixel_emb_proj(pixel).flatten(3, 4).flatten(0, 1).transpose(1, 2)
        pixel_pe = self.spatial_pe(h, w).flatten(0, 1).unsqueeze(0) + pixel_emb
        pixel = self.pixel_init_proj(pixel)
        logits = self.mask_pred[0](pixel).squeeze(2)
        blocked = self._attention_mask(logits, selector)
        if aux_logits is not None:
            aux_logits.append(logits)
        for i, block in enumerate(self.blocks):
            query, pixel = block(query, pixel, query_emb, pixel_pe, blocked)
            if i + 1 < len(self.blocks) or aux_logits is not None:  # the last one only feeds the auxiliary loss
                logits = self.mask_pred[i + 1](pixel).squeeze(2)
                if aux_logits is not None:
                    aux_logits.append(logits)
                if i + 1 < len(self.blocks):
                    blocked = self._attention_mask(logits, selector)
        return pixel

    def _attention_mask(self, logits: torch.Tensor, selector: torch.Tensor | None) -> torch.Tensor:
        """Half of the queries may only look at each object's foreground, the other half only at
        the rest (foreground = where the object wins the soft aggregation); a query with nothing
        to look at may look everywhere."""
        prob = logits.sigmoid() if selector is None else logits.sigmoid() * selector
        logits = aggregate(prob, dim=1)
        foreground = (logits[:, 1:] >= logits.max(dim=1, keepdim=True)[0]).flatten(2)  # (B, N, HW)
        half = self.num_queries // 2
        fg_blocked = (~foreground)[:, :, None, None].expand(-1, -1, self.num_heads, half, -1)
        bg_blocked = foreground[:, :, None, None].expand(-1, -1, self.num_heads, half, -1)
        blocked = torch.cat([fg_blocked, bg_blocked], dim=3).flatten(0, 2)  # (B * N * heads, Q, HW)
        return blocked & ~blocked.all(dim=-1, keepdim=True)


class ObjectSummarizer(nn.Module):
    """Per object, num_summaries weighted poolings of its values: half inside the mask, half outside."""

    def __init__(self, value_dim: int, embed_dim: int, num_summaries: int, pe_scale: float,
                 pe_temperature: float) -> None:
        super().__init__()
        self.num_summaries = num_summaries
        self.pos_enc = PositionalEncoding(embed_dim, pe_scale, pe_temperature)
        self.input_proj = nn.Linear(value_dim, embed_dim)
        self.feature_pred = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim))
        self.weights_pred = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(),
                                          nn.Linear(embed_dim, num_summaries))

    def forward(self, masks: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """masks (B, N, H', W'); value (B, N, C, h, w) -> (B, N, num_summaries, C + 1)."""
        h, w = value.shape[-2:]
        masks = downsample_area(masks, masks.shape[-1] // w).unsqueeze(-1)
        half = self.num_summaries // 2
        repeated = torch.cat([masks.expand(-1, -1, -1, -1, half), (1 - masks).expand(-1, -1, -1, -1, half)], -1)
        value = self.input_proj(value.permute(0, 1, 3, 4, 2)) + self.pos_enc(h, w)
        feature = self.feature_pred(value)
        weights = self.weights_pred(value).sigmoid() * repeated
        sums = torch.einsum("bkhwq,bkhwc->bkqc", weights, feature)
        area = weights.flatten(2, 3).sum(2).unsqueeze(-1)
        return torch.cat([sums, area], dim=-1)
