"""Seeded sampling for the trainers: everything random on the data side is a pure function of the
seed and an image's position, never of the process, the worker or the batch order, so a run is
reproducible on CPU, resumable in the middle of an epoch and identical across DDP ranks. The order
of epoch ``e`` is a permutation seeded from ``(seed, "order", e)`` (:func:`epoch_order`); per-image
randomness is the dataset's own (a generator of ``(seed, ..., epoch, index)``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .distributed import DistContext

def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed for the stream named by ``keys`` (stable across processes and platforms)."""
    text = repr((int(seed), *keys)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


def epoch_order(indices: Sequence[int], seed: int, epoch: int) -> list[int]:
    """The order of ``indices`` (the usable images' positions) in ``epoch``: a seeded permutation."""
    perm = torch.randperm(len(indices), generator=generator(seed, "order", epoch)).tolist()
    return [int(indices[j]) for j in perm]


def padded_length(n: int, world_size: int) -> int:
    """``n`` rounded up to a multiple of ``world_size`` (DistributedSampler's padding)."""
    return math.ceil(n / world_size) * world_size


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch over ``n`` images (the last batch may be smaller)."""
    return math.ceil(padded_length(n, world_size) / batch_size)


def rank_batches(
    indices: Sequence[int], seed: int, epoch: int, batch_size: int,
    rank: int = 0, world_size: int = 1, start: int = 0,
) -> list[list[tuple[int, int]]]:
    """This rank's batches of ``(image index, epoch)`` keys for ``epoch``, from global batch ``start`` on.

    ``batch_size`` is the global batch: global batch ``b`` is ``order[b*B:(b+1)*B]`` and rank ``r``
    takes its elements ``r, r+W, ...``. The order is padded by wrapping around to a multiple of the
    world size so every rank gets the same number of images (a single process is never padded).
    With ``B`` a multiple of ``W``, every rank's share of every batch has the same size, so the
    DDP-averaged gradient is the gradient of the global batch.
    """
    n = len(indices)
    order = epoch_order(indices, seed, epoch)
    total = padded_length(n, world_size)
    order = (order * math.ceil(total / n))[:total]
    batches = []
    for b in range(start, steps_per_epoch(n, batch_size, world_size)):
        chunk = order[b * batch_size:(b + 1) * batch_size]
        batches.append([(i, epoch) for i in chunk[rank::world_size]])
    return batches


class BatchList:
    """A batch sampler over precomputed batches (a list of lists of dataset keys)."""

    def __init__(self, batches: list[list[tuple[int, int]]]):
        self.batches = batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def seed_worker(seed: int, worker_id: int) -> None:
    """A DataLoader worker's ``worker_init_fn``: torch, numpy and ``random`` seeded from ``(seed, worker)``."""
    value = derive_seed(seed, "worker", worker_id)
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


def epoch_loader(
    dataset: Dataset, usable: Sequence[int], seed: int, epoch: int, start: int, batch_size: int, workers: int,
    dist: DistContext, device: torch.device, collate: Callable | None = None,
) -> DataLoader:
    """This rank's batches of ``epoch`` from global batch ``start`` on. The loader's own generator
    is seeded, so creating it draws nothing from the global generator (which the run's state
    restores), and each worker is seeded from ``(seed, epoch, start, rank)``."""
    batches = rank_batches(usable, seed, epoch, batch_size, dist.rank, dist.world_size, start)
    return DataLoader(
        dataset, batch_sampler=BatchList(batches), num_workers=workers, collate_fn=collate,
        worker_init_fn=functools.partial(seed_worker, derive_seed(seed, "workers", epoch, start, dist.rank)),
        generator=generator(seed, "loader", epoch), pin_memory=device.type == "cuda",
    )
