"""`eval run` end to end on synthetic data: batched = one-image path, resume after SIGKILL,
2-process torchrun = 1 process, config guard, scoring reproduces CorLoc by hand.

The backbone is a seeded random ResNet50 whose BatchNorm statistics were calibrated on a few
synthetic images and saved as a ``.pt`` file: plain ``random`` init gives the whole image as the
box for every input, which would make the equality checks below vacuous.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet50

from discovery.eval.cli import main
from discovery.eval.datasets import open_dataset
from discovery.eval.errors import RunError
from discovery.eval.methods import PixelMethod, Proposal
from discovery.eval.run_options import RunOptions
from discovery.eval.rundir import RunFolder
from discovery.eval.runner import run
from discovery.eval.synth import make_image, make_synthetic
from discovery.explain import Explainer
from discovery.images import normalize_and_pad
from discovery.localizer import Localizer
from discovery.weights import IMAGENET_MEAN, IMAGENET_STD, sha256_file

REPO = Path(__file__).resolve().parent.parent
N_IMAGES = 8


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Synthetic data, a calibrated checkpoint and an uninterrupted 1-process reference run."""
    base = tmp_path_factory.mktemp("eval_run")
    make_synthetic(base / "data", n=N_IMAGES, seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = resnet50(weights=None, replace_stride_with_dilation=[False, False, True])
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batch
            m.reset_running_stats()
    rng = np.random.default_rng(123)
    calib = torch.stack([normalize_and_pad(make_image(rng, i, (64, 96)).rgb, IMAGENET_MEAN, IMAGENET_STD, 16) for i in range(6)])
    net.train()
    with torch.no_grad():
        net(calib)
    net.eval()
    ckpt = base / "calibrated.pt"
    torch.save(net.state_dict(), ckpt)
    ref = base / "reference"
    summary = run(RunOptions("voc07", base / "data", str(ckpt), ref, batch_size=4, workers=0, progress=False))
    return {"base": base, "data": base / "data", "ckpt": ckpt, "ref": ref, "summary": summary}


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, **kwargs,
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_reference_run_outputs(bench):
    s, ref = bench["summary"], bench["ref"]
    records = _lines(ref / "predictions.jsonl")
    assert [r["image_id"] for r in records] == [f"{i:06d}" for i in range(1, N_IMAGES + 1)]
    assert set(records[0]) >= {"image_id", "box", "seed", "correct", "iou"}
    assert s["total"] == N_IMAGES and s["correct"] == sum(r["correct"] for r in records)
    assert s["corloc"] == pytest.approx(100 * s["correct"] / N_IMAGES)
    assert json.loads((ref / "results.json").read_text()) == s
    for key in ("dataset", "split", "backbone", "weights_sha256", "stride", "k", "library_version", "git_revision",
                "wall_time_s", "images_per_s"):
        assert key in s
    assert s["dataset"] == "voc07" and s["split"] == "trainval" and s["stride"] == 16 and s["k"] == 100
    assert json.loads((ref / "config.json").read_text())["weights_sha256"] == s["weights_sha256"]
    widths = {(r["box"][2] - r["box"][0], r["box"][3] - r["box"][1]) for r in records}
    assert len(widths) > 3  # the boxes differ from image to image: the checks below are not vacuous


def test_batched_boxes_equal_the_one_image_localizer(bench):
    records = {r["image_id"]: r for r in _lines(bench["ref"] / "predictions.jsonl")}
    localizer = Localizer(str(bench["ckpt"]), max_side=None)
    dataset = open_dataset("voc07", bench["data"])
    shapes = [tuple(-(-s // 16) * 16 for s in Image.open(it.path).size) for it in dataset.items]
    assert len(set(shapes)) < len(shapes)  # some images shared a batch
    for item in dataset.items:
        loc = localizer(item.path)
        assert records[item.image_id]["box"] == [round(v, 2) for v in loc.box]
        assert records[item.image_id]["seed"] == [round(v, 2) for v in loc.seed_xy]


def test_score_reproduces_corloc_computed_by_hand(bench, capsys):
    """Independent of eval.datasets/metrics: parse the XML and compute IoU here."""
    voc = bench["data"] / "VOCdevkit" / "VOC2007"
    records = _lines(bench["ref"] / "predictions.jsonl")
    correct = 0
    for r in records:
        root = ET.parse(voc / "Annotations" / f"{r['image_id']}.xml").getroot()
        hit = False
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            gx1, gy1 = float(bb.findtext("xmin")) - 1, float(bb.findtext("ymin")) - 1
            gx2, gy2 = float(bb.findtext("xmax")), float(bb.findtext("ymax"))
            x1, y1, x2, y2 = r["box"]
            inter = max(0.0, min(x2, gx2) - max(x1, gx1)) * max(0.0, min(y2, gy2) - max(y1, gy1))
            union = (x2 - x1) * (y2 - y1) + (gx2 - gx1) * (gy2 - gy1) - inter
            hit |= inter / union >= 0.5
        correct += hit
    assert 0 < correct < N_IMAGES  # a mixed result, so a flipped rule would show
    expected = 100 * correct / N_IMAGES
    assert main(["score", "--dataset", "voc07", "--root", str(voc), "--predictions", str(bench["ref"] / "predictions.jsonl")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["corloc"] == pytest.approx(expected) and out["correct"] == correct and out["total"] == N_IMAGES
    assert bench["summary"]["corloc"] == pytest.approx(expected)

    # the same boxes as a COCO-style results file, with a worse, lower-scored box per image
    coco = bench["base"] / "results_coco.json"
    dets = []
    for r in records:
        x1, y1, x2, y2 = r["box"]
        dets += [{"image_id": int(r["image_id"]), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 0.8},
                 {"image_id": int(r["image_id"]), "bbox": [0, 0, 1, 1], "score": 0.1}]
    coco.write_text(json.dumps(dets[2:]))  # the first image has none at all: a miss
    assert main(["score", "--dataset", "voc07", "--root", str(voc), "--predictions", str(coco)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "coco" and out["missing"] == 1
    assert out["correct"] == correct - int(records[0]["correct"])


def test_resume_after_sigkill_equals_uninterrupted_run(bench):
    out = bench["base"] / "killed"
    proc = _cli("-m", "eval", "run", "--dataset", "voc07", "--root", str(bench["data"]), "--backbone", str(bench["ckpt"]),
                "--out", str(out), "--batch-size", "1", "--workers", "1", "--no-progress", start_new_session=True)
    preds = out / "predictions.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if preds.exists() and preds.read_text().count("\n") >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its decoding worker, mid-run
    proc.communicate()
    done = preds.read_text().count("\n")
    assert 2 <= done < N_IMAGES, "the kill must land mid-run"
    with open(preds, "a") as fh:
        fh.write('{"image_id": "0000')  # as if the kill had torn a line
    summary = run(RunOptions("voc07", bench["data"], str(bench["ckpt"]), out, batch_size=4, workers=0, progress=False))
    assert summary["images_resumed"] >= done and summary["images_this_run"] == N_IMAGES - summary["images_resumed"]
    assert preds.read_bytes() == (bench["ref"] / "predictions.jsonl").read_bytes()
    assert (summary["corloc"], summary["correct"], summary["total"]) == (
        bench["summary"]["corloc"], bench["summary"]["correct"], bench["summary"]["total"])
    # a third run has nothing left to do
    again = run(RunOptions("voc07", bench["data"], str(bench["ckpt"]), out, batch_size=4, workers=0, progress=False))
    assert again["images_this_run"] == 0 and again["corloc"] == summary["corloc"]


def test_two_process_torchrun_equals_one_process(bench):
    out = bench["base"] / "torchrun"
    proc = _cli("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "eval", "run",
                "--dataset", "voc07", "--root", str(bench["data"]), "--backbone", str(bench["ckpt"]), "--out", str(out),
                "--batch-size", "4", "--workers", "0", "--no-progress")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])  # only rank 0 prints
    assert summary["world_size"] == 2 and summary["images_this_run"] == N_IMAGES
    assert (out / "predictions.jsonl").read_bytes() == (bench["ref"] / "predictions.jsonl").read_bytes()
    assert (summary["corloc"], summary["correct"], summary["total"]) == (
        bench["summary"]["corloc"], bench["summary"]["correct"], bench["summary"]["total"])
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "predictions.jsonl", "results.json"]


def test_different_config_is_refused(bench, capsys, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(bench["ref"], out)
    before = (out / "predictions.jsonl").read_bytes()
    args = ["run", "--dataset", "voc07", "--root", str(bench["data"]), "--backbone", str(bench["ckpt"]), "--out", str(out),
            "--workers", "0", "--no-progress"]
    assert main([*args, "--k", "50"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out} holds a run with a different config (k: 100 there, 50 now)") and err.count("\n") == 1
    assert main([*args, "--no-hard"]) == 2
    assert "no_hard: False there, True now" in capsys.readouterr().err
    assert main([*args, "--precision", "bf16"]) == 2
    assert "precision: 'fp32' there, 'bf16' now" in capsys.readouterr().err
    assert (out / "predictions.jsonl").read_bytes() == before
    with pytest.raises(RunError, match="holds predictions but no config.json"):
        (out / "config.json").unlink()
        run(RunOptions("voc07", bench["data"], str(bench["ckpt"]), out, workers=0, progress=False))


def test_unreadable_image_fails_clearly_or_is_skipped(bench, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(bench["data"] / "VOCdevkit", data / "VOCdevkit")
    bad = data / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000002.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    args = ["run", "--dataset", "voc07", "--root", str(data), "--backbone", str(bench["ckpt"]), "--workers", "0",
            "--no-progress", "--limit", "3"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read image {bad}") and "--skip-bad" in err and err.count("\n") == 1
    # the image before the bad one was finished and kept (the loop holds one batch in flight)
    kept = [json.loads(line)["image_id"] for line in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()]
    assert kept == ["000001"]
    assert main([*args, "--out", str(tmp_path / "b"), "--skip-bad"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped_unreadable_image"] == 1 and summary["total"] == 2 and summary["limit"] == 3


def test_coco20k_run_end_to_end(bench, capsys):
    out = bench["base"] / "coco"
    assert main(["run", "--dataset", "coco20k", "--root", str(bench["data"]), "--backbone", str(bench["ckpt"]),
                 "--out", str(out), "--workers", "0", "--no-progress", "--limit", "3"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "not LOST's coco_20k_filenames.txt" in captured.err
    assert summary["total"] == 3 and summary["official_image_list"] is False and summary["dataset"] == "coco20k"
    assert captured.err.splitlines()[-1] == (
        f"coco20k: CorLoc {summary['corloc']:.1f} % ({summary['correct']} / 3), {summary['wall_time_s']:.1f} s, "
        f"results in {out / 'results.json'}")
    ids = [r["image_id"] for r in _lines(out / "predictions.jsonl")]
    dataset = open_dataset("coco20k", bench["data"])
    assert ids == [it.image_id for it in dataset.items[:3]]
    # extending the limit resumes: only the new images are computed
    assert main(["run", "--dataset", "coco20k", "--root", str(bench["data"]), "--backbone", str(bench["ckpt"]),
                 "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["images_resumed"] == 3 and summary["total"] == len(dataset.items) == N_IMAGES - 1
    assert f"resuming {out}: 3 of {N_IMAGES - 1} images done already" in captured.err
    assert ", 3 resumed, results in " in captured.err.splitlines()[-1]


def test_gradcam_method_scores_cam_boxes(bench, capsys):
    out = bench["base"] / "gradcam"
    assert main(["run", "--dataset", "voc07", "--root", str(bench["data"]), "--backbone", str(bench["ckpt"]),
                 "--out", str(out), "--workers", "0", "--no-progress", "--method", "gradcam", "--limit", "4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "gradcam" and summary["total"] == 4
    explainer = Explainer(Localizer(str(bench["ckpt"]), max_side=None))
    dataset = open_dataset("voc07", bench["data"])
    for record, item in zip(_lines(out / "predictions.jsonl"), dataset.items):
        assert record["box"] == [round(v, 2) for v in explainer(item.path).box]
        assert record["seed"] is None


def test_invalid_options_write_nothing_and_a_failed_start_does_not_block(bench, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--dataset", "voc07", "--root", str(bench["data"]), "--backbone", str(bench["ckpt"]), "--out", str(out),
            "--workers", "0", "--no-progress", "--limit", "1"]
    for bad in (["--k", "-3"], ["--limit", "0"], ["--batch-size", "0"], ["--workers", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, *bad])
        assert exit_info.value.code == 2 and f"argument {bad[0]}: must be" in capsys.readouterr().err
        assert not out.exists(), bad
    assert main([*args, "--method", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown method 'nope'") and not out.exists()
    with pytest.raises(ValueError, match="--k must be at least 1"):
        RunOptions("voc07", bench["data"], str(bench["ckpt"]), out, k=-3)
    # a folder an earlier (unchecked) run left with a bad config and no prediction is taken over
    out.mkdir()
    (out / "config.json").write_text(json.dumps({**json.loads((bench["ref"] / "config.json").read_text()), "k": -3}))
    (out / "predictions.jsonl").write_text("")
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"note: {out} held no prediction yet; its config is replaced (k: -3 there, 100 now)" in captured.err
    assert json.loads((out / "config.json").read_text())["k"] == 100 and json.loads(captured.out)["total"] == 1



def test_score_reads_a_run_folder_and_refuses_another_dataset(bench, capsys):
    ref, expected = bench["ref"], bench["summary"]
    for args in ([str(ref)], ["--predictions", str(ref)]):
        assert main(["score", *args]) == 0  # dataset and root from the run's config.json
        out = json.loads(capsys.readouterr().out)
        assert (out["dataset"], out["corloc"], out["total"]) == ("voc07", expected["corloc"], N_IMAGES)
    assert main(["score", str(ref), "--dataset", "voc12", "--root", str(bench["data"])]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: none of the {N_IMAGES} image ids of {ref / 'predictions.jsonl'} (e.g. '000001') is in voc12")


def test_run_folder_reader_gives_config_dataset_root_and_records(bench, tmp_path):
    contents = RunFolder(bench["ref"]).read()
    assert contents.config == json.loads((bench["ref"] / "config.json").read_text())
    assert (contents.dataset, contents.root) == ("voc07", bench["data"] / "VOCdevkit" / "VOC2007")
    assert contents.records == {r["image_id"]: r for r in _lines(bench["ref"] / "predictions.jsonl")} and contents.dropped == 0
    assert contents.predictions_sha256 == sha256_file(bench["ref"] / "predictions.jsonl")
    with pytest.raises(RunError, match=f"^{tmp_path} is not an `eval run` folder \\(no config.json\\)$"):
        RunFolder(tmp_path).read()


class Corners(PixelMethod):
    """A pixel method: the top-left quarter of each image it is handed."""

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def load(self, device: str) -> None:
        self.device = device

    def propose(self, images):
        self.shapes += [rgb.shape for rgb in images]
        return [Proposal((0.0, 0.0, rgb.shape[1] / 2, rgb.shape[0] / 2)) for rgb in images]

    def config(self) -> dict:
        return {"corners": 1}


def test_pixel_methods_get_the_decoded_images_and_no_backbone(bench, tmp_path, monkeypatch):
    method = Corners()
    monkeypatch.setattr("discovery.eval.runner.get_method", lambda name: method)
    monkeypatch.setattr("discovery.eval.runner.Localizer", None)  # loading a backbone would fail
    out = tmp_path / "corners"
    summary = run(RunOptions("voc07", bench["data"], "no-such-backbone", out, method="corners", batch_size=2, workers=0, progress=False))
    dataset = open_dataset("voc07", bench["data"])
    sizes = [Image.open(it.path).size for it in dataset.items]
    assert sorted(method.shapes) == sorted((h, w, 3) for w, h in sizes) and method.device == "cpu"
    assert [r["box"] for r in _lines(out / "predictions.jsonl")] == [[0.0, 0.0, round(w / 2, 2), round(h / 2, 2)] for w, h in sizes]
    config = json.loads((out / "config.json").read_text())
    assert config["corners"] == 1 and "backbone" not in config and "backbone" not in summary and summary["total"] == N_IMAGES


def test_the_random_backbone_is_labelled_in_config_results_and_stderr(bench, tmp_path):
    """``random`` is a pipeline check: config.json and results.json say ``random_backbone: true`` and
    stderr has the note; a real checkpoint's run says false and its config has no such key."""
    random_run, real_run = tmp_path / "random", tmp_path / "real"
    proc = _cli("-m", "discovery.eval", "run", "--dataset", "voc07", "--root", str(bench["data"]), "--backbone", "random",
                "--out", str(random_run), "--limit", "2", "--workers", "0", "--no-progress")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "note: backbone 'random' is a pipeline check, not a model" in err
    assert json.loads((random_run / "config.json").read_text())["random_backbone"] is True
    assert json.loads((random_run / "results.json").read_text())["random_backbone"] is True
    assert bench["summary"]["random_backbone"] is False
    assert "random_backbone" not in json.loads((bench["ref"] / "config.json").read_text())



def test_tokencut_method_records_tau_and_refuses_another(bench, capsys, tmp_path):
    from discovery.tokencut import localize as tokencut

    out = bench["base"] / "tokencut"
    common = ["run", "--dataset", "voc07", "--root", str(bench["data"]), "--backbone", str(bench["ckpt"]), "--workers", "0",
              "--no-progress", "--method", "tokencut", "--batch-size", "4"]
    args = [*common, "--out", str(out), "--limit", "4"]
    # this network's cells are all about 0.45 alike: at the default τ = 0.2 every graph is complete
    # (the degenerate rule's first cell); τ = 0.5 cuts them
    assert main([*args, "--tau", "0.5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "tokencut" and summary["tau"] == 0.5 and summary["total"] == 4
    assert json.loads((out / "config.json").read_text())["tau"] == 0.5
    localizer = Localizer(str(bench["ckpt"]), max_side=None)
    records = _lines(out / "predictions.jsonl")
    for record, item in zip(records, open_dataset("voc07", bench["data"]).items):
        embedding = localizer.embed(item.path)
        res = tokencut(embedding.features, embedding.image.size, stride=16, tau=0.5)
        geometry = embedding.image.geometry
        assert record["box"] == [round(v, 2) for v in geometry.clip(geometry.box_to_original(res.box))]
        assert record["seed"] == [round(v, 2) for v in geometry.cell_centre(res.seed)]
    assert len({tuple(r["box"]) for r in records}) > 1
    assert main(args) == 2
    assert "tau: 0.5 there, 0.2 now" in capsys.readouterr().err
    assert main([*args, "--tau", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["images_this_run"] == 0
    default = tmp_path / "default"
    assert main([*common, "--out", str(default), "--limit", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["tau"] == 0.2 and json.loads((default / "config.json").read_text())["tau"] == 0.2
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--tau", "2"])
    assert exit_info.value.code == 2 and "argument --tau: must be a cosine similarity in [-1, 1], got 2" in capsys.readouterr().err
    assert "tau" not in json.loads((bench["ref"] / "config.json").read_text())  # LOST runs keep their config
