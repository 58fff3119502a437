"""IoU / CorLoc rules, prediction files (torn lines, COCO results JSON) and `eval score`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from discovery.eval.cli import main
from discovery.eval.datasets import Dataset, Item, open_dataset
from discovery.eval.metrics import best_iou, corloc, iou, is_correct
from discovery.eval.predictions import append_records, load_records, read_predictions
from discovery.eval.scoring import match_ids, score_file


def test_iou_is_continuous_without_plus_one():
    gt = np.array([[0, 0, 10, 10]], float)
    assert iou([0, 0, 10, 10], gt)[0] == 1.0
    assert iou([0, 0, 5, 10], gt)[0] == 0.5  # 50 / 100; with the old +1 rule it would be 66/121
    assert iou([10, 0, 20, 10], gt)[0] == 0.0  # touching edges share no area
    assert iou([5, 5, 15, 15], gt)[0] == pytest.approx(25 / 175)
    assert iou([2, 2, 4, 4], gt)[0] == pytest.approx(4 / 100)  # contained
    assert iou([3, 3, 3, 9], gt)[0] == 0.0  # zero width
    assert iou([0, 0, 0, 0], np.array([[0, 0, 0, 0]], float))[0] == 0.0  # empty union


def test_threshold_is_inclusive_and_any_gt_counts():
    gt = np.array([[0, 0, 10, 10], [50, 50, 70, 90]], float)
    assert is_correct([0, 0, 10, 5], gt)  # exactly 0.5 counts
    assert not is_correct([0, 0, 10, 4.99], gt)
    assert is_correct([50, 50, 70, 80], gt)  # matches the second box only (IoU 0.75)
    assert best_iou([50, 50, 70, 80], gt) == 0.75
    assert not is_correct([100, 100, 120, 120], gt)
    assert not is_correct([0, 0, 10, 10], np.zeros((0, 4)))  # no ground truth: a miss
    assert not is_correct(None, gt)


def _items():
    return [
        Item("a", Path("a.jpg"), np.array([[0, 0, 10, 10]], float)),
        Item("b", Path("b.jpg"), np.array([[0, 0, 10, 10], [20, 20, 40, 40]], float)),
        Item("c", Path("c.jpg"), np.array([[0, 0, 10, 10]], float)),
        Item("d", Path("d.jpg"), np.zeros((0, 4))),
    ]


def test_corloc_counts_missing_predictions_as_misses():
    result = corloc(_items(), {"a": (0, 0, 10, 10), "b": (21, 21, 40, 40), "d": (0, 0, 1, 1)})
    assert (result.correct, result.total, result.missing) == (2, 4, 1)
    assert result.value == 50.0
    assert corloc([], {}).value == 0.0


def test_jsonl_torn_last_line_dropped_and_repaired(tmp_path):
    path = tmp_path / "p.jsonl"
    with open(path, "a") as fh:
        append_records(fh, [{"image_id": "a", "box": [0, 0, 1, 1]}, {"image_id": "b", "box": [0, 0, 2, 2]}])
    with open(path, "a") as fh:
        fh.write('{"image_id": "c", "bo')  # SIGKILL in the middle of a write
    loaded = load_records(path)
    assert list(loaded.records) == ["a", "b"]
    assert path.read_bytes().endswith(b'"bo')  # reading alone never rewrites
    load_records(path, repair=True)
    assert path.read_text().endswith("\n") and len(path.read_text().splitlines()) == 2
    with open(path, "a") as fh:  # the next append starts on a clean line
        append_records(fh, [{"image_id": "c", "box": [0, 0, 3, 3]}])
    assert list(load_records(path).records) == ["a", "b", "c"]


def test_jsonl_invalid_lines_and_duplicates(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"image_id": "a", "box": [0, 0, 1, 1]}\nnot json\n{"image_id": 5, "box": [0, 0, 1, 1]}\n'
        '{"image_id": "b", "box": [0, 0]}\n{"image_id": "a", "box": [9, 9, 9, 9]}\n'
    )
    loaded = load_records(path)
    assert loaded.dropped == 3 and loaded.records == {"a": {"image_id": "a", "box": [0, 0, 1, 1]}}
    assert load_records(tmp_path / "missing.jsonl").records == {}


def test_coco_results_top_score_per_image(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([
        {"image_id": 9, "bbox": [0, 0, 5, 5], "score": 0.2},
        {"image_id": 9, "bbox": [1, 2, 3, 4], "score": 0.9},
        {"image_id": 9, "bbox": [0, 0, 8, 8], "score": 0.5},
        {"image_id": 11, "bbox": [2.5, 1, 1, 1], "score": 0.1},
    ]))
    preds = read_predictions(path)
    assert preds.format == "coco"
    assert preds.boxes == {"9": (1, 2, 4, 6), "11": (2.5, 1, 3.5, 2)}


def test_match_ids_accepts_voc_integers_and_file_names():
    ds = Dataset("voc07", "trainval", Path("."), [Item("000005", Path("x"), np.zeros((0, 4))), Item("000012", Path("y"), np.zeros((0, 4)))])
    boxes, unknown = match_ids(ds, {"5": (0, 0, 1, 1), "000012.jpg": (0, 0, 2, 2), "999999": (0, 0, 3, 3)})
    assert boxes == {"000005": (0, 0, 1, 1), "000012": (0, 0, 2, 2)} and unknown == ["999999"]


def _obj(xmin, ymin, xmax, ymax, difficult=0) -> str:
    return (
        f"<object><name>dog</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


@pytest.fixture
def hand_dataset(tmp_path):
    folder = tmp_path / "VOC2007"
    annotations = {
        "000001": _obj(1, 1, 100, 100),  # gt [0, 0, 100, 100]
        "000002": _obj(11, 11, 50, 50) + _obj(61, 61, 100, 100, difficult=1),  # [10,10,50,50], [60,60,100,100]
        "000003": _obj(1, 1, 40, 40),  # [0, 0, 40, 40]
        "000004": _obj(21, 21, 80, 80),  # [20, 20, 80, 80]
    }
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True)
    for image_id, body in annotations.items():
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "JPEGImages" / f"{image_id}.jpg")
        (folder / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{body}</annotation>")
    (folder / "ImageSets/Main/trainval.txt").write_text("\n".join(annotations) + "\n")
    return folder


def test_score_jsonl_and_coco_results_by_hand(hand_dataset, tmp_path, capsys):
    # By hand: 000001 IoU 0.5 (correct), 000002 hits only the difficult box (IoU 0.64, correct),
    # 000003 IoU 400/1600 (miss), 000004 has no prediction (miss): CorLoc 2/4 = 50%.
    jsonl = tmp_path / "pred.jsonl"
    jsonl.write_text(
        '{"image_id": "000001", "box": [0, 0, 100, 50]}\n'
        '{"image_id": "000002", "box": [60, 60, 100, 85.6]}\n'
        '{"image_id": "000003", "box": [0, 0, 20, 20]}\n'
        '{"image_id": "999999", "box": [0, 0, 1, 1]}\n'
        '{"image_id": "000004", "bo'
    )
    assert main(["score", "--dataset", "voc07", "--root", str(hand_dataset), "--predictions", str(jsonl)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["corloc"], out["correct"], out["total"], out["missing"], out["unknown_ids"]) == (50.0, 2, 4, 1, 1)
    assert out["format"] == "jsonl" and out["dataset"] == "voc07"

    # --no-hard drops the difficult box: 000002 becomes a miss (1/4)
    assert main(["score", "--dataset", "voc07", "--root", str(hand_dataset), "--predictions", str(jsonl), "--no-hard"]) == 0
    assert json.loads(capsys.readouterr().out)["correct"] == 1

    coco = tmp_path / "results.json"
    coco.write_text(json.dumps([
        {"image_id": 1, "bbox": [0, 0, 100, 50], "score": 0.9},
        {"image_id": 1, "bbox": [0, 0, 10, 10], "score": 0.1},  # lower score: ignored
        {"image_id": 3, "bbox": [0, 0, 40, 40], "score": 0.3},
        {"image_id": 4, "bbox": [0, 0, 5, 5], "score": 0.99},
        {"image_id": 4, "bbox": [20, 20, 60, 60], "score": 0.2},  # would be correct, but not top-scored
    ]))
    summary = score_file(open_dataset("voc07", hand_dataset), coco)
    assert (summary["correct"], summary["total"], summary["missing"], summary["format"]) == (2, 4, 1, "coco")


def test_score_unreadable_predictions_is_one_line(hand_dataset, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 1, "bbox": "x"}]')
    assert main(["score", "--dataset", "voc07", "--root", str(hand_dataset), "--predictions", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "bad.json" in err
    assert main(["score", "--dataset", "voc07", "--root", str(hand_dataset), "--predictions", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_score_refuses_a_file_for_another_dataset(hand_dataset, tmp_path, capsys):
    """Rule: refuse when no id is the dataset's, or more ids are unknown than known (unless --allow-unknown-ids)."""
    path = tmp_path / "mostly_other.jsonl"
    path.write_text(''.join(f'{{"image_id": "{i}", "box": [0, 0, 100, 50]}}\n' for i in ("000001", "2008_000001", "2008_000002")))
    args = ["score", "--dataset", "voc07", "--root", str(hand_dataset), "--predictions", str(path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == (f"error: 2 of the 3 image ids of {path} (e.g. '2008_000001') are not in voc07 trainval ({hand_dataset}); "
                   "pass --allow-unknown-ids to score the 1 that are\n")
    assert main([*args, "--allow-unknown-ids"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["correct"], out["total"], out["unknown_ids"]) == (1, 4, 2)
    path.write_text("")
    assert main(args) == 2 and capsys.readouterr().err == f"error: {path} holds no predictions\n"
    assert main(["score", "--predictions", str(path)]) == 2
    assert "--dataset and --root are needed" in capsys.readouterr().err
