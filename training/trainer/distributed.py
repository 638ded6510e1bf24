"""Process-group setup from the torchrun environment (gloo on CPU, NCCL on GPU) and small collectives."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None in a single process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(timeout_minutes: float = 30) -> DistContext:
    """Join the process group when torchrun set WORLD_SIZE > 1; otherwise one process on cuda:0 or CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if world <= 1:
        return DistContext(0, 0, 1, torch.device("cuda" if cuda else "cpu"), None)
    if cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistContext(dist.get_rank(), local_rank, dist.get_world_size(), device, backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if `flag` is true on at least one (so all ranks stop at the same step)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """`obj` from every rank, in rank order (a one-element list in a single process)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
