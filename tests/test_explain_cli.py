"""``discovery explain``: JSON lines, overlays, sanity check table and plot, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from discovery.cli import main


@pytest.fixture
def images(tmp_path, textured_image):
    good = tmp_path / "object.png"
    Image.fromarray(textured_image).save(good)
    other = tmp_path / "other.jpg"
    Image.fromarray(textured_image[:64, :80]).save(other)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    return good, other, broken


def _records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_explain_writes_overlays_and_json(images, tmp_path, capsys):
    good, other, _ = images
    out_dir = tmp_path / "out"
    code = main(["explain", str(good), str(other), "--backbone", "random", "--out-dir", str(out_dir), "--target", "tabby"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    records = _records(captured.out)
    assert [r["image"] for r in records] == [str(good), str(other)]
    for rec, size in zip(records, ((96, 128), (64, 80))):
        assert rec["method"] == "gradcam" and rec["target"] == 281 and rec["target_name"] == "tabby"
        assert 0 <= rec["probability"] <= 1 and rec["backbone"] == "random"
        x1, y1, x2, y2 = rec["box"]
        assert 0 <= x1 < x2 <= size[1] and 0 <= y1 < y2 <= size[0]
        overlay = np.asarray(Image.open(rec["overlay"]))
        assert Path(rec["overlay"]).name == f"{Path(rec['image']).stem}_random_gradcam.png"
        # the map at the image's size, with an 18 px title above, its colour bar and the random note below
        assert overlay.shape == (18 + size[0] + 18 + 18, size[1], 3)
    assert "pipeline check" in captured.err


def test_explain_bad_image_others_still_run(images, capsys):
    good, _, broken = images
    code = main(["explain", str(broken), str(good), "--backbone", "random", "--method", "eigencam"])
    captured = capsys.readouterr()
    assert code == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {broken}: not a recognised image format"]
    (record,) = _records(captured.out)
    assert record["image"] == str(good) and record["method"] == "eigencam" and record["target"] is None
    assert "Traceback" not in captured.err


def test_explain_sanity_check_table_and_plot(images, tmp_path, capsys):
    good, _, _ = images
    plot = tmp_path / "plots" / "sanity.png"
    code = main(["explain", str(good), "--backbone", "random", "--sanity-check", "--plot", str(plot)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (record,) = _records(captured.out)
    assert [s["layer"] for s in record["sanity"]] == ["fc", "layer4", "layer3", "layer2", "layer1", "conv1+bn1"]
    assert "spearman" in captured.err and "ssim" in captured.err
    assert record["plot"] == str(plot) and Image.open(plot).size[0] > 200


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target", "not-a-class"], "unknown ImageNet class 'not-a-class'"),
        (["--target", "1000"], "out of range"),
        (["--method", "eigencam", "--target", "3"], "class-agnostic"),
        (["--plot", "x.png"], "--plot needs --sanity-check"),
        (["--sanity-check", "--plot", "x.txt"], "--plot must end in"),
        (["--threshold", "2"], "--threshold must be in [0, 1]"),
    ],
)
def test_explain_user_errors_are_one_line(images, capsys, extra, message):
    good, _, _ = images
    code = main(["explain", str(good), "--backbone", "random", *extra])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], captured.err
    assert "Traceback" not in captured.err


def test_explain_out_dir_is_a_file(images, tmp_path, capsys):
    good, _, _ = images
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["explain", str(good), "--backbone", "random", "--out-dir", str(blocker)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_explain_missing_weights_is_one_line(images, capsys):
    good, _, _ = images
    assert main(["explain", str(good), "--backbone", "dino"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "dino_resnet50_pretrain.pth" in err[0]


def test_explain_bundled_example_and_no_image(tmp_path, capsys):
    code = main(["explain", "--example", "coffee", "--backbone", "random", "--max-side", "96", "--method", "eigencam"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (record,) = _records(captured.out)
    assert record["image"].endswith("coffee.png")
    x1, y1, x2, y2 = record["box"]
    assert 0 <= x1 < x2 <= 600 and 0 <= y1 < y2 <= 400  # original pixels, though run at 96 px
    assert main(["explain", "--backbone", "random"]) == 2
    assert "give at least one IMAGE" in capsys.readouterr().err
