"""CorLoc while PUL trains: the ``evaluate`` hook that ``pul train --eval-every`` hands the trainer.

The command (``discovery/commands/pul.py``) builds it with :func:`corloc_hook` and passes it as
``train(config, evaluate=hook)``; the trainer (:func:`discovery.pul.train`) never imports the
harness and knows nothing of datasets or ground truth: every ``--eval-every`` steps it calls
``hook(steps_done, backbone)`` on rank 0 with a frozen copy of the student at LOST's stride 16. This module opens the benchmark once and scores LOST on the same
fixed image list at every call. The ground-truth boxes are read here, for scoring only: the
trainer never sees them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from discovery.backbone import Backbone
from discovery.localizer import Localizer
from discovery.lost import DEFAULT_K

from .datasets import Item, open_dataset
from .loader import bucketed, decoded_stream
from .methods import lost
from .metrics import corloc
from .overlap import overlapped


class CorLocHook:
    """``hook(steps_done, backbone) -> CorLoc`` (percent) of LOST on ``items``.

    Images are decoded at native resolution for every call (nothing is cached: a full split does
    not fit in memory); an unreadable image counts as a miss.
    """

    def __init__(self, items: list[Item], k: int = DEFAULT_K, batch_size: int = 1, workers: int = 0):
        if not items:
            raise ValueError("no images to score CorLoc on")
        self.items, self.k, self.batch_size, self.workers = items, k, batch_size, workers

    def __call__(self, steps_done: int, backbone: Backbone) -> float:
        localizer = Localizer(backbone, max_side=None)
        boxes: dict[str, tuple[float, float, float, float]] = {}
        batches = bucketed(decoded_stream(self.items, localizer.stride, self.workers), self.batch_size)

        def embed(good):
            return localizer.embed_arrays([d.rgb for d in good])

        def propose(embeddings):
            return lost(localizer, embeddings, self.k)

        for batch, proposals in overlapped(batches, embed, propose, localizer.backbone.device):
            good = [d for d in batch if d.rgb is not None]
            boxes.update((d.item.image_id, p.box) for d, p in zip(good, proposals))
        return corloc(self.items, boxes).value


def corloc_hook(
    dataset: str, root: str | Path, limit: int | None = None, image_list: str | Path | None = None,
    k: int = DEFAULT_K, batch_size: int = 1, workers: int = 0,
) -> Callable[[int, Backbone], float]:
    """A :class:`CorLocHook` on the first ``limit`` images (all when ``None``) of ``dataset`` under
    ``root``, in the split's order. Raises ``DatasetError`` / ``ValueError`` (one line)."""
    if limit is not None and limit < 1:
        raise ValueError(f"--eval-limit must be at least 1, got {limit}")
    items = open_dataset(dataset, root, image_list=image_list).items
    return CorLocHook(items[:limit] if limit else items, k, batch_size, workers)
