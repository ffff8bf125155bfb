"""Small building blocks shared by the model families."""
from __future__ import annotations

import itertools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from maskml.models import winograd


def capturing_graph() -> bool:
    """A graph is being traced for another runtime (ONNX export): writes into views of a tensor, which
    traced graphs do not record faithfully, give way to plain out-of-place operations."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def is_inference() -> bool:
    """No autograd graph is being recorded: in-place activations and cached tensors are safe."""
    return not torch.is_grad_enabled() and not capturing_graph()


def gelu_inplace(x: torch.Tensor) -> torch.Tensor:
    """GELU (erf form), in place on a fresh tensor when no graph is recorded."""
    return torch.ops.aten.gelu_(x) if is_inference() else F.gelu(x)


def _clear_after_load(module: "InferenceCache", incompatible_keys) -> None:
    module.clear_cache()


class InferenceCache(nn.Module):
    """Base of the modules that cache, for inference, tensors derived from their parameters. The
    cache is dropped by load_state_dict, train()/eval() (BatchNorm updates its running statistics
    without bumping their version counters) and .to()/.half(); it is also keyed on the sources'
    storage and version counter, so an in-place edit of a weight refreshes it too. Weights made inside
    torch.inference_mode (a model built there) have no version counter: for them the cache is keyed on
    the storage alone, so only their in-place edits inside inference mode go unseen."""

    def __init__(self, *args, **kwargs) -> None:  # the arguments of the module it is mixed into, if any
        super().__init__(*args, **kwargs)
        self._cache: tuple | None = None
        self.register_load_state_dict_post_hook(_clear_after_load)

    def clear_cache(self) -> None:
        self._cache = None

    def train(self, mode: bool = True):
        self.clear_cache()
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        self.clear_cache()
        return super()._apply(fn, recurse)

    def derived(self, sources: tuple[torch.Tensor, ...], compute, key: tuple = ()):
        """compute(), reused while `sources` and `key` are unchanged (inference only: eval mode, no
        autograd). One entry: a different `key` replaces it."""
        if self.training or not is_inference():
            return compute()
        full_key = tuple((t.data_ptr(), None if t.is_inference() else t._version) for t in sources) + key
        if self._cache is None or self._cache[0] != full_key:
            self._cache = (full_key, compute())
        return self._cache[1]


def fold_batch_norm(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the one convolution equal to a bias-free convolution followed by `bn` in eval mode."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale


class ConvBNCache(InferenceCache):
    """Base of the modules built of (bias-free Conv2d, BatchNorm2d) pairs, listed by conv_bn_pairs():
    outside training each pair runs as one convolution with the BatchNorm folded in, the folded weights
    computed once for inference (see InferenceCache)."""

    def conv_bn_pairs(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
        raise NotImplementedError

    def _folded(self) -> list["FoldedConv"]:
        return [FoldedConv(conv, *fold_batch_norm(conv.weight, bn)) for conv, bn in self.conv_bn_pairs()]

    def conv_bn(self, index: int, x: torch.Tensor) -> torch.Tensor:
        pairs = self.conv_bn_pairs()
        conv, bn = pairs[index]
        if self.training:  # batch statistics
            return bn(conv(x))
        sources = tuple(t for c, b in pairs for t in (c.weight, b.weight, b.bias, b.running_mean, b.running_var))
        return self.derived(sources, self._folded)[index](x)


class FoldedConv:
    """A convolution with its BatchNorm folded in (for inference), its Winograd weights made on first use."""

    def __init__(self, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.conv, self.weight, self.bias = conv, weight, bias
        self._winograd: torch.Tensor | None = None

    def winograd_weight(self) -> torch.Tensor:
        if self._winograd is None:
            self._winograd = winograd.transform_weight(self.weight)
        return self._winograd

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return winograd.conv2d(x, self.weight, self.bias, c.stride, c.padding, c.dilation, c.groups,
                               self.winograd_weight)


class Conv2d(InferenceCache, nn.Conv2d):
    """nn.Conv2d (same arguments, parameters and keys) whose 3x3 convolutions run as Winograd where that is
    faster (see maskml/models/winograd.py); the transformed weights are cached for inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            return super().forward(x)
        return winograd.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                               self.winograd_weight)

    def winograd_weight(self) -> torch.Tensor:
        return self.derived((self.weight,), lambda: winograd.transform_weight(self.weight))


def add_inplace(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """fresh + other, in place on the fresh tensor when no graph is recorded; the sum then keeps
    fresh's memory layout (an out-of-place sum of a channels-last (B, 1, C, H, W) view can come out
    in NCHW order, and every convolution after it would pay a transposing copy)."""
    return fresh.add_(other) if is_inference() else fresh + other


def relu_inplace(x: torch.Tensor) -> torch.Tensor:
    """ReLU, in place on a fresh tensor when no graph is recorded."""
    return x.relu_() if is_inference() else F.relu(x)


def ceil_div(n: int, d: int) -> int:
    """Ceiling of n / d for sizes; written with a positive floor division because a traced graph
    divides integers truncating toward zero, where Python floors (-(-n // d) would go wrong)."""
    return (n + d - 1) // d


def _spans(n: int, ws: int) -> list[tuple[slice, slice, int]]:
    """Along one axis of length n cut into windows of ws: (image slice, window slice, extent inside
    those windows) for the whole windows and for the partial last one, whose rest is padding."""
    whole = n // ws
    spans = [(slice(0, whole * ws), slice(0, whole), ws)] if whole else []
    if n % ws:
        spans.append((slice(whole * ws, n), slice(whole, whole + 1), n % ws))
    return spans


def window_regions(b: int, h: int, w: int, c: int, ws: int):
    """(index into the (B, H, W, C) image, index into the (B, nh, ws, nw, ws, C) window grid, common
    6-D shape) for each block of the image that maps onto the grid without padding."""
    for (ri, gi, rn), (ci, gj, cn) in itertools.product(_spans(h, ws), _spans(w, ws)):
        shape = (b, gi.stop - gi.start, rn, gj.stop - gj.start, cn, c)
        yield (slice(None), ri, ci), (slice(None), gi, slice(rn), gj, slice(cn)), shape


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) of any strides -> (B * nh * nw, ws * ws, C) contiguous windows, cut with one copy
    (no padded image in between); where the image ends inside the last row/column of windows the
    rest is zeros."""
    b, h, w, c = x.shape
    nh, nw = ceil_div(h, ws), ceil_div(w, ws)
    if capturing_graph():
        x = F.pad(x, (0, 0, 0, nw * ws - w, 0, nh * ws - h))
        return x.reshape(b, nh, ws, nw, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
    windows = x.new_empty(b, nh, nw, ws, ws, c)
    grid = windows.permute(0, 1, 3, 2, 4, 5)  # (B, nh, ws, nw, ws, C): the padded image
    if h % ws:
        grid[:, -1, h % ws:].zero_()
    if w % ws:
        grid[:, :, :, -1, w % ws:].zero_()
    for image, window, shape in window_regions(b, h, w, c, ws):
        grid[window] = x[image].view(shape)
    return windows.view(-1, ws * ws, c)


def window_unpartition(windows: torch.Tensor, ws: int, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of window_partition: (B * nh * nw, ws * ws, C) -> (B, H, W, C), padding dropped, one copy."""
    nh, nw = ceil_div(h, ws), ceil_div(w, ws)
    grid = windows.reshape(b, nh, nw, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    if capturing_graph():
        return grid.reshape(b, nh * ws, nw * ws, -1)[:, :h, :w]
    out = windows.new_empty(b, h, w, grid.shape[-1])
    for image, window, shape in window_regions(b, h, w, grid.shape[-1], ws):
        out[image].view(shape).copy_(grid[window])
    return out


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            # channels-last memory is already NHWC: the fused LayerNorm over its last axis, no copy
            # (on NCHW memory the reductions below are faster than a transposing copy)
            return F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps
                                ).permute(0, 3, 1, 2)
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Two linear layers with an activation in between (the transformer FFN)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """`num_layers` linear layers with an activation (ReLU by default) between them (hypernetworks,
    IoU head, Hiera's MLP with GELU)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 sigmoid_output: bool = False, act: Callable[[torch.Tensor], torch.Tensor] = F.relu) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.sigmoid_output = sigmoid_output
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


# Cross-attention between a few tokens and many (SAM's decoder: a handful of prompt tokens and 4096
# image tokens; Cutie's object transformer: 16 object queries and every pixel). Projecting the N
# many tokens costs N*C*D multiply-adds per projection; with T few tokens and H heads, the same
# products regrouped around the few side cost N*C*H*T, less whenever H*T < D. Per head,
# q.(W_k x + b_k) = (W_k^T q).x + q.b_k, where q.b_k is the same for every key and so drops out of
# the softmax; sum_n p_n (W_v x_n + b_v) = W_v (sum_n p_n x_n) + b_v as the p_n sum to 1; and an
# output projection distributes over the heads and the few values. Projections are (weight, bias).

def folds(heads: int, few: int, internal_dim: int) -> bool:
    """Whether the regrouped form is the cheaper one."""
    return heads * few < internal_dim


def shared_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (B, M, K) @ b (1 or B, K, N); a b shared by the batch runs as one matrix product."""
    if b.shape[0] == 1 and a.shape[0] > 1:
        return (a.reshape(1, -1, a.shape[-1]) @ b).view(a.shape[0], a.shape[1], -1)
    return a @ b


def few_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_proj, k_proj, v_proj, heads: int,
                        blocked: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention of a few queries q (B, T, C) to many keys k, v (1 or B, N, C), before the
    output projection: (B, T, D). blocked (B, H, T, N) bool: True where attention is not allowed."""
    (wq, bq), (wk, _), (wv, bv) = q_proj, k_proj, v_proj
    b, t, _ = q.shape
    head_dim = wq.shape[0] // heads
    q = F.linear(q, wq, bq).view(b, t, heads, head_dim).transpose(1, 2) * head_dim ** -0.5
    q = q @ wk.view(heads, head_dim, -1)  # (B, H, T, C_kv)
    # the H*T folded queries read the un-projected keys as one single-head attention, scores, softmax
    # and pooling fused in SDPA (no B x HT x N score tensor); image-side tensors shared by a batch of
    # prompts (batch 1) take all B*H*T queries at once
    groups = 1 if k.shape[0] == 1 else b
    q = q.reshape(groups, 1, -1, q.shape[-1])
    allowed = None if blocked is None else ~blocked.reshape(groups, 1, q.shape[2], -1)
    pooled = F.scaled_dot_product_attention(q, k.unsqueeze(1), v.unsqueeze(1), attn_mask=allowed, scale=1.0)
    pooled = pooled.view(b, heads, t, -1)  # (B, H, T, C_kv)
    out = pooled @ wv.view(heads, head_dim, -1).transpose(1, 2) + bv.view(heads, 1, head_dim)
    return out.transpose(1, 2).reshape(b, t, heads * head_dim)


def few_key_attention(q: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor, q_proj, k_proj, v_proj, out_proj,
                      heads: int, q_heads: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention of many queries q (1 or B, N, C) to a few keys k, v (B, T, C), output
    projection included: (B, N, C_out). q_heads (1 or B, H, N, d): the queries projected already."""
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = q_proj, k_proj, v_proj, out_proj
    b, t, _ = k.shape
    head_dim = wk.shape[0] // heads
    k = F.linear(k, wk, bk).view(b, t, heads, head_dim).transpose(1, 2) * head_dim ** -0.5  # (B, H, T, d)
    v = F.linear(v, wv, bv).view(b, t, heads, head_dim).transpose(1, 2)
    if q_heads is not None:
        scores = k @ q_heads.transpose(-1, -2)  # (B, H, T, N)
    else:
        w = k @ wq.view(heads, head_dim, -1)  # (B, H, T, C)
        bias = k @ bq.view(heads, head_dim, 1)  # (B, H, T, 1)
        scores = shared_matmul(w.reshape(b, heads * t, -1), q.transpose(1, 2)).view(b, heads, t, -1) + bias
    p = scores.softmax(2)  # over the T keys; N stays the contiguous axis, which keeps it fast
    per_key = v @ wo.view(-1, heads, head_dim).permute(1, 2, 0)  # (B, H, T, C_out)
    return torch.baddbmm(bo, p.reshape(b, heads * t, -1).transpose(1, 2), per_key.reshape(b, heads * t, -1))
