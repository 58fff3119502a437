"""What ``eval run`` takes (:class:`RunOptions`, checked when made, before any file is touched) and
its measured defaults for batch size and decoding workers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .datasets import DATASETS


def default_batch_size(device: str) -> int:
    """1 on CPUs, where bigger batches measured slower (``python -m bench``: activations leave the
    caches), 32 on GPUs (docs/performance.md: batch 32 fed the H200 better than 16)."""
    return 32 if str(device).startswith("cuda") else 1


#: The help text of every option that sets ``eval run``'s batch size.
BATCH_SIZE_DEFAULT = f"{default_batch_size('cpu')} on CPU, {default_batch_size('cuda')} on GPU"


def default_workers(device: str = "cpu") -> int:
    """Decoding processes: none on a machine of two cores or fewer (a worker would take a core
    from the convolutions; measured faster). On CPUs half the cores, at most 4 (the rest run the
    network); on GPUs every core but two (the main process feeds the device), at most 16. Under
    torchrun the node's cores are split between its processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # torchrun: processes share the node
    if cores <= 2:
        return 0
    if str(device).startswith("cuda"):
        return min(16, cores - 2)
    return min(4, cores // 2)


@dataclass(frozen=True)
class RunOptions:
    """Everything ``eval run`` takes. ``limit``: evaluate only the first N images of the split;
    ``batch_size``: images per forward pass (same padded size only); ``workers``: decoding
    processes (``None`` for either: :func:`default_batch_size` / :func:`default_workers`);
    ``features``: a ViT's feature map (``None``: its keys); ``skip_bad``: leave out images with bad annotations or unreadable files; ``tau``: TokenCut's
    graph threshold (``None``: :data:`discovery.tokencut.DEFAULT_TAU`); ``precision``:
    ``fp32`` (the protocol) or ``bf16``/``fp16`` autocast for the trunk on GPUs; ``tf32``: let
    CUDA fp32 math use TensorFloat-32 (off: IEEE fp32, see :mod:`discovery.precision`).

    Raises ``ValueError`` (one line) for a value no run accepts; the backbone, stride, precision,
    method and dataset are checked by loading them, before the run folder is touched."""

    dataset: str
    root: Path
    backbone: str
    out: Path
    stride: int = 16
    features: str | None = None
    k: int = 100
    tau: float | None = None
    no_hard: bool = False
    limit: int | None = None
    batch_size: int | None = None
    workers: int | None = None
    method: str = "lost"
    device: str = "cpu"
    precision: str = "fp32"
    tf32: bool = False
    weights_dir: Path | None = None
    image_list: Path | None = None
    skip_bad: bool = False
    progress: bool = True

    def __post_init__(self):
        checks = [
            (self.dataset in DATASETS, f"--dataset: choose one of {', '.join(DATASETS)}, got {self.dataset!r}"),
            (self.k >= 1, f"--k must be at least 1, got {self.k}"),
            (self.tau is None or -1.0 <= self.tau <= 1.0, f"--tau must be a cosine similarity in [-1, 1], got {self.tau}"),
            (self.limit is None or self.limit >= 1, f"--limit must be at least 1, got {self.limit}"),
            (self.batch_size is None or self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.workers is None or self.workers >= 0, f"--workers must be 0 or more, got {self.workers}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

