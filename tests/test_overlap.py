"""The eval loop's one-batch-in-flight schedule (eval/overlap.py), on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from discovery.eval.datasets import Item
from discovery.eval.loader import Decoded
from discovery.eval.overlap import overlapped


def _batch(ids: list[int], bad: bool = False) -> list[Decoded]:
    items = [Item(str(i), Path(f"{i}.jpg"), np.zeros((0, 4))) for i in ids]
    if bad:
        return [Decoded(item, None, None, "cannot read image") for item in items]
    return [Decoded(item, np.full((4, 4, 3), i, np.uint8), (16, 16)) for i, item in zip(ids, items)]


def test_next_forward_pass_is_queued_before_the_proposals_and_order_is_kept():
    log: list[str] = []

    def embed(good):
        log.append("embed " + ",".join(d.item.image_id for d in good))
        return [int(d.rgb[0, 0, 0]) for d in good]

    def propose(embedded):
        log.append("propose " + ",".join(map(str, embedded)))
        return [10 * v for v in embedded]

    batches = [_batch([1, 2]), _batch([3]), _batch([4], bad=True), _batch([5, 6])]
    out = [([d.item.image_id for d in batch], list(p)) for batch, p in overlapped(batches, embed, propose, torch.device("cpu"))]
    assert out == [(["1", "2"], [10, 20]), (["3"], [30]), (["4"], []), (["5", "6"], [50, 60])]
    # batch i+1 is embedded before batch i's proposals; an unreadable batch is never embedded
    assert log == ["embed 1,2", "embed 3", "propose 1,2", "propose 3", "embed 5,6", "propose 5,6"]


def test_a_consumer_stopping_at_an_unreadable_batch_has_every_earlier_batch():
    batches = iter([_batch([1]), _batch([2]), _batch([3], bad=True), _batch([4])])
    seen = []
    for batch, proposals in overlapped(batches, lambda good: good, lambda e: [d.item.image_id for d in e], torch.device("cpu")):
        if batch[0].rgb is None:
            break
        seen.extend(proposals)
    assert seen == ["1", "2"]


def test_an_error_in_the_forward_pass_propagates():
    def embed(good):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        list(overlapped([_batch([1])], embed, lambda e: e, torch.device("cpu")))
