"""The process group of a `torchrun` launch, and the few collectives training and evaluation need.

Every function works unchanged in a plain single process (not launched by torchrun): rank 0 of a world of 1,
collectives return their input. Tensors travel on the device the backend needs (CUDA for NCCL, CPU for gloo).
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

# A rank waiting for a crashed peer should fail in minutes, not hang for the default 30.
_TIMEOUT = timedelta(minutes=10)


def launched_by_torchrun() -> bool:
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_distributed(backend: str | None = None) -> None:
    """Join the process group torchrun describes in the environment; a no-op outside torchrun or when joined.

    backend None: NCCL when CUDA is available, gloo otherwise. With NCCL each process takes GPU LOCAL_RANK.
    """
    if dist.is_initialized() or not launched_by_torchrun():
        return
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=_TIMEOUT)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its own node (which GPU it uses)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _collective_device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(value: float | torch.Tensor, mean: bool) -> float | torch.Tensor:
    if not is_distributed():
        return value
    as_tensor = isinstance(value, torch.Tensor)
    tensor = value.detach() if as_tensor else torch.tensor(float(value), dtype=torch.float64)
    work = tensor.to(_collective_device(), copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    if mean:
        work = work / world_size()
    return work.to(tensor.device) if as_tensor else work.item()


def all_reduce_sum(value: float | torch.Tensor) -> float | torch.Tensor:
    """The sum over ranks, of the same type as `value` (a float, or a tensor on the input's device)."""
    return _all_reduce(value, mean=False)


def all_reduce_mean(value: float | torch.Tensor) -> float | torch.Tensor:
    """The mean over ranks, of the same type as `value`."""
    return _all_reduce(value, mean=True)


def all_gather_objects(obj: object) -> list:
    """Every rank's `obj` (picklable), in rank order."""
    if not is_distributed():
        return [obj]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def shard(n: int) -> range:
    """The indices of 0..n-1 this rank handles (rank, rank + world, ...): together the ranks cover each once."""
    return range(rank(), n, world_size())


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
