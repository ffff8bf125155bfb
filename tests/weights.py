"""Deterministic stand-in weights for the parity fixtures.

The fixtures in tests/fixtures were produced by the official implementations
with every tensor filled from its key name and shape (the spec lives in the
fixtures' README). This is an independent implementation of that spec, so the
tests can rebuild those weights without the official code or ../shared.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import torch

_MASK64 = (1 << 64) - 1
_STEP = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def _uniform(key: str, count: int, seed: int) -> np.ndarray:
    """splitmix64 stream seeded by (seed, crc32(key)), mapped to [-1, 1) in float32."""
    base = np.uint64(((seed << 32) + zlib.crc32(key.encode("utf-8"))) & _MASK64)
    with np.errstate(over="ignore"):
        z = np.arange(1, count + 1, dtype=np.uint64) * _STEP + base
        z = (z ^ (z >> np.uint64(30))) * _MUL1
        z = (z ^ (z >> np.uint64(27))) * _MUL2
        z = z ^ (z >> np.uint64(31))
    top24 = (z >> np.uint64(40)).astype(np.float64)
    return (top24 / float(1 << 23) - 1.0).astype(np.float32)


def fill_tensor(key: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    shape = tuple(int(s) for s in shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    u = _uniform(key, math.prod(shape), seed).reshape(shape)
    if key.endswith("running_var"):
        values = 1.0 + 0.5 * np.abs(u)
    elif key.endswith("running_mean"):
        values = 0.1 * u
    elif key.endswith("bias"):
        values = 0.05 * u
    elif key.endswith("weight") and len(shape) == 1:
        values = 1.0 + 0.1 * u
    elif key.endswith("weight") and len(shape) >= 2:
        values = u * math.sqrt(3.0 / math.prod(shape[1:]))
    else:
        values = 0.5 * u
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def fill_state_dict(manifest: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """{key: shape} -> {key: tensor}, in manifest order."""
    return {key: fill_tensor(key, tuple(shape), seed) for key, shape in manifest.items()}
