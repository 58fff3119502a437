"""Class-agnostic detection scores of several boxes per image, through pycocotools' ``COCOeval``.

Every ground-truth box of the evaluated images counts as one "object" (difficult and truncated VOC
objects included, as CorLoc keeps them); every predicted box with its score is a detection of that
one class. Boxes are ``x1, y1, x2, y2`` pixels (right/bottom exclusive) and are handed to COCO as
``[x, y, w, h]``; COCOeval's IoU uses ``w * h`` areas, the same continuous convention as CorLoc.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

Box = Sequence[float]


@dataclass(frozen=True)
class DetectionScore:
    """``ap50``: AP at IoU 0.5 in percent (COCOeval ``stats[1]``, area all, 100 detections);
    ``ap``: AP averaged over IoU 0.5:0.95 (``stats[0]``); ``images``, ``objects``, ``detections``: counts."""

    ap50: float
    ap: float
    images: int
    objects: int
    detections: int

    def to_json(self) -> dict:
        return {"ap50": round(self.ap50, 4), "ap": round(self.ap, 4), "ap_images": self.images,
                "ap_objects": self.objects, "ap_detections": self.detections}


def detection_score(items: Iterable, detections: Mapping[str, tuple[Sequence[Box], Sequence[float]]]) -> DetectionScore:
    """Class-agnostic AP of ``detections`` (image id → (boxes, scores)) against the ``boxes`` of
    ``items`` (objects with ``image_id`` and an ``(n, 4)`` ``boxes`` array). Images without an entry
    have no detections."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ValueError("AP needs pycocotools: pip install pycocotools") from None
    images, annotations, results = [], [], []
    for number, item in enumerate(items, start=1):
        images.append({"id": number})
        for x1, y1, x2, y2 in item.boxes.tolist():
            w, h = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
            annotations.append({"id": len(annotations) + 1, "image_id": number, "category_id": 1,
                                "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
        boxes, scores = detections.get(item.image_id, ((), ()))
        for (x1, y1, x2, y2), score in zip(boxes, scores):
            results.append({"image_id": number, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    if not annotations:
        return DetectionScore(0.0, 0.0, len(images), 0, len(results))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
        gt.createIndex()
        if not results:
            return DetectionScore(0.0, 0.0, len(images), len(annotations), 0)
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap, ap50 = (max(float(v), 0.0) * 100 for v in evaluator.stats[:2])
    return DetectionScore(ap50, ap, len(images), len(annotations), len(results))
