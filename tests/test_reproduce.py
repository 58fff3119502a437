"""The Table 5 grid (`reproduce --quick`), CorLoc while PUL trains, per-epoch checkpoints and the
evidence tools, on synthetic data with the random base (CPU, tiny inputs, one epoch)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from discovery import load_backbone
from discovery.cli import main
from discovery.eval.cli import main as eval_main
from discovery.eval.synth import make_synthetic
from discovery.eval.table import PIPELINE_CHECK, PUBLISHED_LOST, Row, table_markdown
from discovery.weights import load_file

QUICK = ["reproduce", "--quick", "--epochs", "1", "--no-progress"]
NUMBERS = ("base", "dataset", "method", "lost_ours", "pul_ours", "pul_minus_lost", "pul_images", "note")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quick") / "run"
    assert main([*QUICK, "--out", str(out)]) == 0
    return out


def test_quick_writes_both_tables_labelled_with_every_cell_recorded(quick_run):
    md = (quick_run / "table.md").read_text()
    assert "Pipeline check, not a result" in md
    rows = _rows(quick_run / "table.csv")
    datasets = ("voc07", "voc12", "coco20k")
    assert [(r["base"], r["dataset"], r["method"]) for r in rows] == [
        *(("random", d, "lost") for d in datasets),
        *(("random-vits16", d, m) for d in datasets for m in ("lost", "tokencut")),
    ]
    for row in rows:
        assert row["note"] == PIPELINE_CHECK
        assert row["lost_ours"] and row["pul_ours"] and row["pul_minus_lost"]
        assert row["base_sha256"] == "random-seed0" and len(row["pul_sha256"]) == 64 and row["git_revision"]
        cell = json.loads((quick_run / "cells" / f"{row['base']}-{row['dataset']}" / "cell.json").read_text())
        assert cell[f"{row['method']}_pul"]["weights_sha256"] == row["pul_sha256"]
        config = json.loads((quick_run / "cells" / f"{row['base']}-{row['dataset']}" / f"{row['method']}-base" / "config.json").read_text())
        assert config["method"] == row["method"] and config.get("lost_standardize", True) == (row["base"] == "random")
        assert cell["pul"]["metadata"]["epochs"] == 1 and cell["options"]["quick"] is True
        assert cell["git_revision"] == row["git_revision"]
    assert (quick_run / "synth" / "VOCdevkit" / "VOC2007").is_dir()


def test_stopped_run_continues_to_the_same_table(quick_run, tmp_path, capsys):
    out = tmp_path / "run"
    args = [*QUICK, "--out", str(out), "--datasets", "voc07"]
    assert main([*args, "--stop-after", "1"]) == 3
    assert (out / "cells" / "random-voc07" / "pul.safetensors.state.pt").is_file()
    assert "run the same command again" in capsys.readouterr().err
    assert main(args) == 0  # resumes the PUL state, reuses the base's eval run
    resumed = _rows(out / "table.csv")
    full = [r for r in _rows(quick_run / "table.csv") if r["dataset"] == "voc07"]
    assert [{k: r[k] for k in NUMBERS} for r in resumed] == [{k: r[k] for k in NUMBERS} for r in full]
    assert main([*QUICK, "--out", str(out), "--datasets", "voc07", "--epochs", "2"]) == 2  # other options refused
    assert "other options" in capsys.readouterr().err


def test_python_m_eval_reproduce_is_the_same_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["reproduce", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0 and "--quick" in help_text
    assert "--eval-batch-size EVAL_BATCH_SIZE eval run images per forward pass (default: 1 on CPU, 32 on GPU)" in help_text
    assert main(["reproduce", "--out", "/nonexistent-x", "--root", "/nonexistent-y"]) == 2
    assert capsys.readouterr().err == "error: --root /nonexistent-y is not a directory\n"


def test_table_puts_published_numbers_and_deltas_beside_ours():
    row = Row("imagenet", "voc07", lost=33.0, pul=35.25)
    assert row.published == PUBLISHED_LOST[("imagenet", "voc07")] == 33.5
    vit = Row("dino-vits16", "voc12", lost=70.0, method="tokencut")
    md = table_markdown([row, Row("dino", "coco20k"), vit])
    assert "| imagenet | voc07 | lost | 33.50 | 33.00 | 35.25 | +2.25 | -0.50 |" in md
    assert "| dino | coco20k | lost | 26.50 | … | … | … | n/a |" in md
    assert "| dino-vits16 | voc12 | tokencut | 72.10 | 70.00 | … | … | -2.10 |" in md
    assert Row("dino", "voc07", method="tokencut").published is None  # nothing published there


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    make_synthetic(root, 6, seed=0, overwrite=True)
    return root


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pul") / "pul.safetensors"
    code = main([
        "pul", "train", "--backbone", "random", "--dataset", "voc07", "--root", str(synth), "--out", str(out),
        "--epochs", "1", "--input-size", "32", "--batch-size", "4", "--lr", "0.0001", "--workers", "0", "--no-progress",
        "--log-dynamics", str(out.with_suffix(".csv")), "--eval-every", "1", "--save-every-epoch",
    ])
    assert code == 0
    return out


def test_eval_every_writes_the_corloc_column_and_plot_draws_its_panel(trained):
    rows = _rows(trained.with_suffix(".csv"))
    assert len(rows) == 2 and all(0 <= float(r["corloc"]) <= 100 for r in rows)
    png = trained.with_suffix(".png")
    assert main(["pul", "plot", str(trained.with_suffix(".csv")), "--out", str(png)]) == 0
    assert Image.open(png).size[1] == 1200  # four panels of 300 px: losses, swing, speed, CorLoc


def test_eval_every_needs_the_dynamics_csv(synth, tmp_path, capsys):
    code = main(["pul", "train", "--backbone", "random", "--dataset", "voc07", "--root", str(synth),
                 "--out", str(tmp_path / "p.safetensors"), "--eval-every", "1"])
    assert code == 2 and capsys.readouterr().err.startswith("error: --eval-every writes into the dynamics CSV")


def test_epoch_checkpoints_keep_the_projector_and_load_as_backbones(trained):
    for epoch in (0, 1):
        path = trained.with_name(f"pul.epoch{epoch}.safetensors")
        tensors, meta = load_file(path)
        assert meta["epoch"] == epoch and "pul_projector.2.weight" in tensors
        assert load_backbone(f"pul:{path}").info.metadata["epoch"] == epoch  # projector keys ignored
    final, _ = load_file(trained)
    last, _ = load_file(trained.with_name("pul.epoch1.safetensors"))
    assert all(torch.equal(final[k], last[k]) for k in final)


def test_evidence_writes_activation_tables_and_both_figures(trained, synth, tmp_path):
    out = tmp_path / "evidence"
    names = ["random", *(str(trained.with_name(f"pul.epoch{e}.safetensors")) for e in (0, 1))]
    code = main(["pul", "evidence", "--checkpoints", *names, "--dataset", "voc07", "--root", str(synth),
                 "--count", "2", "--max-side", "96", "--out", str(out)])
    assert code == 0
    rows = _rows(out / "activations.csv")
    assert [(r["checkpoint"], r["stage"]) for r in rows[:5]] == [("random", s) for s in ("conv1", "layer1", "layer2", "layer3", "layer4")]
    assert {r["checkpoint"] for r in rows} == {"random", "epoch 0", "epoch 1"}
    assert all(float(r["max_over_median"]) >= 1 and len(r["top4_abs"].split()) == 4 for r in rows)
    assert "pipeline check, not a result" in (out / "activations.md").read_text()
    for name in ("activations.png", "gradcam_grid.png"):
        assert Image.open(out / name).size[0] > 100


def test_evidence_refuses_images_the_run_did_not_train_on(trained, synth, capsys):
    code = main(["pul", "evidence", "--checkpoints", str(trained.with_name("pul.epoch1.safetensors")),
                 "--dataset", "voc12", "--root", str(synth), "--out", "/tmp/unused-evidence", "--no-plot"])
    assert code == 2 and "not the image list" in capsys.readouterr().err
