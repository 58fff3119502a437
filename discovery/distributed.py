"""The few torch.distributed pieces the evaluation harness and the PUL trainer need, and a no-op
context for one process.

Under ``torchrun`` the environment carries ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; we join the
group with ``gloo`` on CPU or ``nccl`` on CUDA. Without it everything runs as rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``local_rank`` on the node and the
    ``device`` it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, items: list[T]) -> list[T]:
        """This rank's share: every ``world_size``-th item from ``rank`` (deterministic, disjoint,
        covering; unlike ``DistributedSampler`` nothing is repeated to even out the shards)."""
        return items[self.rank :: self.world_size]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (in place)."""
        if self.active:
            dist.all_reduce(values)
        return values

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on rank 0 (``None`` elsewhere)."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def from_env(device: str = "cpu") -> DistContext:
    """This process's place from torchrun's environment, without joining the group yet.

    ``device`` is the user's choice; under torchrun a bare ``cuda`` becomes ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        device = f"cuda:{local_rank}"
    return DistContext(int(os.environ["RANK"]), world, local_rank, device)


def join(ctx: DistContext) -> bool:
    """Join the process group of ``ctx`` (gloo on CPU, nccl on CUDA); ``True`` if this call did."""
    if not ctx.active or dist.is_initialized():
        return False
    cuda = ctx.device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(ctx.device))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def setup(device: str = "cpu") -> DistContext:
    """Join the torchrun group if there is one; return this process's :class:`DistContext`."""
    ctx = from_env(device)
    join(ctx)
    return ctx


def teardown(ctx: DistContext) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()
