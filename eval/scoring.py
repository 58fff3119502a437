"""`eval score`: CorLoc of anyone's boxes on a benchmark, as the same JSON summary `eval run` writes.

A file that does not fit the dataset is refused instead of scoring 0: when none of its image ids
is one of the dataset's, or when most are not (more unknown ids than known ones: a file made for
another dataset or split that happens to share a few ids) unless ``allow_unknown`` (a file that
also covers other images, e.g. a detector run over all of ``train2014`` scored on COCO20k).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .datasets import Dataset
from .detection import detection_score
from .metrics import Box, corloc
from .predictions import PredictionsError, read_predictions


def match_ids(dataset: Dataset, boxes: Mapping[str, Box | None]) -> tuple[dict[str, Box | None], list[str]]:
    """Map prediction ids onto ``dataset``'s image ids; return ``(boxes by dataset id, unknown ids)``.

    Besides exact ids, a file name (``000005.jpg``) matches its stem and an integer matches a VOC07
    id zero-padded to six digits (``5`` → ``000005``), as COCO-style tools often write them.
    """
    known = {item.image_id for item in dataset.items}
    matched: dict[str, Box | None] = {}
    unknown = []
    for key, box in boxes.items():
        candidates = [key, Path(key).stem]
        if key.isdigit():
            candidates.append(f"{int(key):06d}")
        hit = next((c for c in candidates if c in known), None)
        if hit is None:
            unknown.append(key)
        elif hit not in matched or key == hit:
            matched[hit] = box
    return matched, unknown


def dataset_summary(dataset: Dataset) -> dict:
    """The dataset fields every summary carries."""
    summary = {
        "dataset": dataset.name,
        "split": dataset.split,
        "root": str(dataset.root),
        "no_hard": dataset.no_hard,
        "expected_images": dataset.expected_count,
        "dropped_no_gt": dataset.dropped_no_gt,
        "skipped_bad_annotation_or_file": len(dataset.skipped),
    }
    if dataset.image_list is not None:
        summary["image_list"] = str(dataset.image_list)
        summary["image_list_sha256"] = dataset.image_list_sha256
        summary["official_image_list"] = dataset.official_list
    return summary


def check_ids(dataset: Dataset, predictions: Path, matched: int, unknown: list[str], allow_unknown: bool) -> None:
    """Refuse (:class:`PredictionsError`, one line) a file that does not fit ``dataset`` (see above)."""
    where = f"{dataset.name} {dataset.split} ({dataset.root})"
    if not matched and not unknown:
        raise PredictionsError(f"{predictions} holds no predictions")
    if not matched:
        raise PredictionsError(f"none of the {len(unknown)} image ids of {predictions} (e.g. {unknown[0]!r}) is in {where}; "
                               "score it against the dataset it was made for")
    if len(unknown) > matched and not allow_unknown:
        raise PredictionsError(f"{len(unknown)} of the {len(unknown) + matched} image ids of {predictions} (e.g. {unknown[0]!r}) "
                               f"are not in {where}; pass --allow-unknown-ids to score the {matched} that are")


def score_file(dataset: Dataset, predictions: Path, allow_unknown: bool = False) -> dict:
    """Score a predictions file (our JSONL or COCO results JSON) on ``dataset``; an image without
    a prediction is a miss. Returns a JSON-ready summary with ``corloc`` (percent), ``correct``,
    ``total``, ``missing``, ``unknown_ids`` and the dataset fields; with several scored boxes per
    image also the class-agnostic ``ap50`` / ``ap`` (:mod:`eval.detection`). Raises
    :class:`PredictionsError` for a file that does not fit the dataset (:func:`check_ids`)."""
    preds = read_predictions(predictions)
    boxes, unknown = match_ids(dataset, preds.boxes)
    check_ids(dataset, predictions, len(boxes), unknown, allow_unknown)
    result = corloc(dataset.items, boxes)
    detections = {}
    if preds.detections:
        detections, _ = match_ids(dataset, preds.detections)
    summary = {
        "corloc": round(result.value, 4),
        "correct": result.correct,
        "total": result.total,
        "missing": result.missing,
        "unknown_ids": len(unknown),
        "unreadable_lines": preds.dropped,
        "predictions": str(predictions),
        "format": preds.format,
        **dataset_summary(dataset),
    }
    if detections:
        summary.update(detection_score(dataset.items, detections).to_json())
    return summary
