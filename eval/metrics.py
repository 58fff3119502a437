"""IoU and CorLoc (docs/protocol.md).

One box per image; the image is correct when the box has IoU >= 0.5 with **any** ground-truth box.
IoU uses continuous coordinates (``x1, y1, x2, y2`` with exclusive right/bottom: area is
``(x2 - x1) * (y2 - y1)``, no +1). CorLoc = 100 × correct / evaluated images.

The reference's ``bbox_iou`` adds ``eps = 1e-7`` to heights and to the union; we compute the exact
ratio in float64, so a box at exactly IoU 0.5 counts as correct here (the threshold is ``>=``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

IOU_THRESHOLD = 0.5

Box = Sequence[float]


def iou(box: Box, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box ``(4,)`` against ``boxes`` ``(n, 4)`` (all ``x1, y1, x2, y2``) → float64 ``(n,)``.

    Degenerate boxes (zero or negative width/height) have zero area; a pair whose union is empty
    has IoU 0.
    """
    b = np.asarray(box, dtype=np.float64).reshape(4)
    g = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(b[2], g[:, 2]) - np.maximum(b[0], g[:, 0]), 0, None)
    ih = np.clip(np.minimum(b[3], g[:, 3]) - np.maximum(b[1], g[:, 1]), 0, None)
    inter = iw * ih
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    area_g = np.clip(g[:, 2] - g[:, 0], 0, None) * np.clip(g[:, 3] - g[:, 1], 0, None)
    union = area_b + area_g - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def best_iou(box: Box | None, boxes: np.ndarray) -> float:
    """The largest IoU of ``box`` with any of ``boxes`` (0.0 when there is no box or no ground truth)."""
    if box is None or len(boxes) == 0:
        return 0.0
    return float(iou(box, boxes).max())


def is_correct(box: Box | None, boxes: np.ndarray, threshold: float = IOU_THRESHOLD) -> bool:
    """CorLoc's test: IoU >= ``threshold`` with any ground-truth box. No box is a miss."""
    return best_iou(box, boxes) >= threshold


@dataclass(frozen=True)
class CorLoc:
    """A CorLoc count: ``correct`` of ``total`` images; ``missing`` of them had no prediction."""

    correct: int
    total: int
    missing: int = 0

    @property
    def value(self) -> float:
        """Percent, 0.0 for an empty set."""
        return 100.0 * self.correct / self.total if self.total else 0.0


def corloc(items: Iterable, boxes: Mapping[str, Box | None]) -> CorLoc:
    """CorLoc of predicted ``boxes`` (image id → box, or ``None``) over ``items``
    (objects with ``image_id`` and ``boxes`` such as :class:`eval.datasets.Item`).
    An item with no prediction counts as a miss."""
    correct = total = missing = 0
    for item in items:
        total += 1
        box = boxes.get(item.image_id)
        if box is None:
            missing += 1
        elif is_correct(box, item.boxes):
            correct += 1
    return CorLoc(correct, total, missing)
