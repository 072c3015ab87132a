"""Process-group helpers for training: one process, or one process per device under torchrun.

Owns reading RANK / WORLD_SIZE / LOCAL_RANK from the environment, starting and ending the process
group (NCCL on CUDA, gloo on CPU), and the few collectives the trainer needs. With WORLD_SIZE unset
or 1 no process group is created and every helper is a cheap no-op, so the same training code runs
as a plain script.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

Tensor = torch.Tensor


@dataclass(frozen=True)
class DistInfo:
    """rank in [0, world_size); local_rank picks the CUDA device on a multi-GPU machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def info_from_env() -> DistInfo:
    """Rank, world size and local rank from the torchrun environment (defaults: one process)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad distributed environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank, world, local)


def init_from_env(device_type: str) -> DistInfo:
    """Start the process group when WORLD_SIZE > 1 (backend NCCL for "cuda", gloo otherwise) and
    return this process's DistInfo. MASTER_ADDR / MASTER_PORT come from the environment (torchrun
    sets them). Idempotent: an existing group is reused."""
    info = info_from_env()
    if info.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, init_method="env://", rank=info.rank,
                                world_size=info.world_size)
    return info


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of `x` over ranks (a new tensor; `x` is left alone). Identity without a process group."""
    if not is_active():
        return x.clone()
    y = x.clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()


def all_gather_objects(obj: Any) -> list[Any]:
    """[obj from rank 0, obj from rank 1, ...]; [obj] without a process group."""
    if not is_active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_active():
        dist.barrier()


def cleanup() -> None:
    """End the process group if one is running."""
    if is_active():
        dist.destroy_process_group()
