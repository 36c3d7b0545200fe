"""Data-parallel training through ``torchrun`` (or any launcher setting RANK / WORLD_SIZE).

One process per device; a single process is the world of size 1 and takes the same code path
(every collective below is then the identity).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> tuple[Dist, bool]:
    """This process's place in the world, and whether this call created the process group.

    An existing process group is used as it is; otherwise one is joined when a launcher (torchrun)
    set ``WORLD_SIZE`` > 1: gloo on CPU, nccl on CUDA.
    """
    created = False
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return Dist(), False
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timedelta(minutes=30))
        created = True
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return Dist(dist.get_rank(), dist.get_world_size(), local), created


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (a detached copy)."""
    t = t.detach().clone()
    if active():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def global_value(t: torch.Tensor) -> torch.Tensor:
    """``t`` whose value is the mean over ranks and whose gradient is that of the local ``t``.

    The task weights are computed from it, so they are the same on every rank, and DDP's gradient
    average then equals the gradient of the weighted loss of the whole (global) batch.
    """
    if not active():
        return t
    return t + (mean(t) - t.detach())


def gather(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
