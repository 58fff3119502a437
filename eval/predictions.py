"""Prediction files: our crash-safe JSONL stream, and COCO-style results JSON from other methods.

JSONL: one object per line, at least ``{"image_id": str, "box": [x1, y1, x2, y2]}``; a detector's
line adds ``"boxes": [[x1, y1, x2, y2], ...]`` and ``"scores": [...]`` (all its boxes). Lines are
appended a batch at a time with one ``write``, then flushed and fsync'ed, so a process killed at any
moment leaves at most one torn last line; :func:`load_records` drops it (and any other unreadable
line) and, with ``repair=True``, rewrites the file so the next append starts on a clean line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from discovery.files import write_text_atomic


class PredictionsError(Exception):
    """An unreadable predictions file; the text is one line naming it."""


@dataclass(frozen=True)
class LoadedRecords:
    """``records``: image id → record (first occurrence wins); ``dropped``: unreadable lines."""

    records: dict[str, dict]
    dropped: int


def _valid(record) -> bool:
    if not isinstance(record, dict) or not isinstance(record.get("image_id"), str):
        return False
    if not (record.get("box") is None or _is_box(record["box"])):
        return False
    boxes, scores = record.get("boxes"), record.get("scores")
    if boxes is None and scores is None:
        return True
    return (
        isinstance(boxes, list) and isinstance(scores, list) and len(boxes) == len(scores)
        and all(_is_box(b) for b in boxes) and all(isinstance(v, (int, float)) for v in scores)
    )


def _is_box(box) -> bool:
    return isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)


def load_records(path: Path, repair: bool = False) -> LoadedRecords:
    """Read a JSONL predictions file, skipping torn or invalid lines.

    With ``repair``, a file that had such lines is rewritten atomically without them (only the
    process that owns the file may repair it). A missing file reads as empty.
    """
    path = Path(path)
    if not path.exists():
        return LoadedRecords({}, 0)
    data = path.read_bytes()
    records: dict[str, dict] = {}
    dropped = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if not _valid(record):
            dropped += 1
            continue
        records.setdefault(record["image_id"], record)
    torn_tail = bool(data) and not data.endswith(b"\n")
    if repair and (dropped or torn_tail):
        write_records(path, records.values())
    return LoadedRecords(records, dropped)


def dumps(record: dict) -> str:
    return json.dumps(record, separators=(", ", ": "))


def append_records(fh: IO[str], records: Sequence[dict]) -> None:
    """Append ``records`` as lines in one write, then flush and fsync (a batch is all or nothing,
    except for a torn last line that :func:`load_records` drops)."""
    if not records:
        return
    fh.write("".join(dumps(r) + "\n" for r in records))
    fh.flush()
    os.fsync(fh.fileno())


def write_records(path: Path, records: Iterable[dict]) -> None:
    """Replace ``path`` atomically (temp file, fsync, rename) with ``records`` as JSONL."""
    write_text_atomic(path, "".join(dumps(r) + "\n" for r in records))


# --- reading anyone's predictions for `eval score` ----------------------------------------------


Detections = tuple[list[tuple[float, float, float, float]], list[float]]


@dataclass(frozen=True)
class Predictions:
    """One box per image id (``x1, y1, x2, y2`` pixels, the top-scoring one for CorLoc); ``format``
    is ``jsonl`` or ``coco``. ``detections``: image id → (all boxes, their scores) where the file
    carries several scored boxes (COCO results, or JSONL lines with ``boxes`` + ``scores``)."""

    boxes: dict[str, tuple[float, float, float, float] | None]
    format: str
    dropped: int = 0
    detections: dict[str, Detections] | None = None


def read_predictions(path: Path) -> Predictions:
    """Read our JSONL, or a COCO results JSON list of ``{"image_id", "bbox": [x, y, w, h], "score"}``
    (the top-scoring box of each image counts; without scores, the first one)."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"predictions file {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    if head.startswith(b"["):
        return _read_coco_results(path)
    loaded = load_records(path)
    if not loaded.records and loaded.dropped:
        raise PredictionsError(f"{path}: no readable prediction lines ({loaded.dropped} unreadable)")
    boxes = {k: (tuple(float(v) for v in r["box"]) if r.get("box") is not None else None) for k, r in loaded.records.items()}
    detections = {
        k: ([tuple(float(v) for v in b) for b in r["boxes"]], [float(v) for v in r["scores"]])
        for k, r in loaded.records.items() if r.get("boxes") is not None
    }
    return Predictions(boxes, "jsonl", loaded.dropped, detections or None)


def _read_coco_results(path: Path) -> Predictions:
    try:
        with open(path) as fh:
            results = json.load(fh)
    except (ValueError, UnicodeDecodeError) as err:
        raise PredictionsError(f"{path}: not valid JSON ({str(err).splitlines()[0]})") from None
    best: dict[str, tuple[float, tuple[float, float, float, float]]] = {}
    detections: dict[str, Detections] = {}
    for number, det in enumerate(results):
        try:
            image_id = str(det["image_id"])
            x, y, w, h = (float(v) for v in det["bbox"])
            score = float(det.get("score", 0.0))
        except (KeyError, TypeError, ValueError):
            raise PredictionsError(
                f"{path}: entry {number} is not a COCO result {{\"image_id\", \"bbox\": [x, y, w, h], \"score\"}}"
            ) from None
        if image_id not in best or score > best[image_id][0]:
            best[image_id] = (score, (x, y, x + w, y + h))
        boxes, scores = detections.setdefault(image_id, ([], []))
        boxes.append((x, y, x + w, y + h))
        scores.append(score)
    return Predictions({k: v[1] for k, v in best.items()}, "coco", detections=detections)
