"""Cutie's pixel-memory readout: the affinity of query pixels to memory keys, its top-k softmax, and
the weighted sum of the chosen memory values. The memories themselves live in maskml/predict/cutie/."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from maskml.models.common import capturing_graph

def similarity(mem_key: torch.Tensor, mem_shrinkage: torch.Tensor, query_key: torch.Tensor,
               query_selection: torch.Tensor) -> torch.Tensor:
    """Anisotropic negative squared L2 distance, scaled by the memory shrinkage: (B, HW, N_mem)
    (query pixels first, so that top-k runs along contiguous memory).

    -sum_c e_c (k_c - q_c)^2 * s / sqrt(C) with e, q of the query and k, s of the memory, expanded
    as one matrix product [e, 2 e q, -sum e q^2] @ [-k^2, k, 1] * s / sqrt(C): no pass over the
    HW x N result besides writing it."""
    qe = query_selection.transpose(1, 2)  # (B, HW, CK)
    qk = query_key.transpose(1, 2)
    b_sq = (qe * qk.pow(2)).sum(-1, keepdim=True)
    query_side = torch.cat([qe, 2 * qk * qe, -b_sq], dim=-1)  # (B, HW, 2 CK + 1)
    scale = mem_shrinkage / math.sqrt(mem_key.shape[1])  # (B, 1, N)
    memory_side = torch.cat([-mem_key.pow(2), mem_key, torch.ones_like(scale)], dim=1) * scale
    return query_side @ memory_side


def topk_softmax(sim: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the top_k memory entries of each query pixel (exp without max subtraction, as
    the original). Returns weights and indices, both (B, HW, k)."""
    # traced for ONNX (maskml.export.cutie), top_k is a graph input and the memory length a dynamic size
    k = torch.minimum(top_k, torch._shape_as_tensor(sim)[-1]) if capturing_graph() else min(top_k, sim.shape[-1])
    values, indices = torch.topk(sim, k=k, dim=-1)
    weights = values.exp()
    return weights / weights.sum(dim=-1, keepdim=True), indices


def sparse_readout(value: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """value (B, C, N) read at the top-k entries: (B, C, HW), without forming the N x HW affinity:
    a weighted embedding-bag sum of each pixel's k memory rows (no HW x k x C gather either)."""
    if capturing_graph():  # ONNX has no embedding bag: the k rows of each pixel are gathered, then summed
        return torch.stack([(weights[b].unsqueeze(1) @ value[b].t()[indices[b]]).squeeze(1).t()
                            for b in range(value.shape[0])])
    return torch.stack([F.embedding_bag(indices[b], value[b].t().contiguous(), per_sample_weights=weights[b],
                                        mode="sum").t() for b in range(value.shape[0])])


def read_top_k(query_key: torch.Tensor, query_selection: torch.Tensor, mem_key: torch.Tensor,
               mem_shrinkage: torch.Tensor, mem_values: torch.Tensor, top_k):
    """Query key/selection (B, CK, HW), memory key (B, CK, N), shrinkage (B, 1, N), values (B, CV, N) ->
    readout (B, CV, HW) and the top-k weights and memory indices (B, HW, k) it used."""
    weights, indices = topk_softmax(similarity(mem_key, mem_shrinkage, query_key, query_selection), top_k)
    return sparse_readout(mem_values, weights, indices), weights, indices
