"""LOST+CAD on synthetic data: pseudo-boxes of an `eval run` → `discovery cad train` → Detector,
`locate --detector`, `eval run --method cad:FILE` (CorLoc + AP50), `eval score` of multi-box files,
resume after a stop and after SIGKILL, safe checkpoint loading.

CPU budget: tiny images, a frozen trunk (``--freeze-at 5``: only the RPN head and the box
predictor train), a few RoIs per image, 2-3 iterations; the check that the detector gets ahead of
LOST trains a small single-map detector for 200 iterations (~30 s). Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kill_at_first_state
from safetensors import safe_open
from safetensors.torch import save_file

from discovery import Detector
from discovery import weights as W
from discovery.cli import main as discovery_main
from discovery.eval.cli import main as eval_main
from discovery.eval.datasets import open_dataset
from discovery.eval.detection import detection_score
from discovery.eval.synth import make_synthetic
from discovery.provenance import git_revision
from discovery.pul import state_path

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--min-size", "64", "--min-size-test", "64", "--max-size", "128", "--anchor-sizes", "16,32,64",
         "--roi-size", "4", "--rpn-batch", "32", "--roi-batch", "8", "--proposals", "100,20,100,10",
         "--freeze-at", "5", "--batch-size", "2", "--lr", "0.001", "--warmup-steps", "1", "--workers", "0", "--no-progress"]


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, json.loads(fh.metadata()["discovery"])


@pytest.fixture(scope="module")
def lost_run(tmp_path_factory) -> dict[str, Path]:
    """Synthetic VOC07 (6 images, 1-3 objects each) and LOST's boxes on it (random backbone)."""
    base = tmp_path_factory.mktemp("cad")
    made = make_synthetic(base / "data", n=6, seed=0)
    run = base / "lost"
    rc = eval_main(["run", "--dataset", "voc07", "--root", str(made.out), "--backbone", "random",
                    "--out", str(run), "--no-progress", "--workers", "0"])
    assert rc == 0
    return {"base": base, "root": made.out, "run": run}


@pytest.fixture(scope="module")
def trained(lost_run) -> Path:
    out = lost_run["base"] / "det.safetensors"
    rc = discovery_main(["cad", "train", "--run", str(lost_run["run"]), "--backbone", "random", "--out", str(out),
                         "--iterations", "3", *SMALL])
    assert rc == 0
    return out


def test_checkpoint_carries_its_provenance_and_loads_as_a_detector(lost_run, trained):
    tensors, meta = read_checkpoint(trained)
    assert meta["format"] == "discovery-cad/1" and meta["steps"] == meta["iterations"] == 3
    config_bytes = (lost_run["run"] / "config.json").read_bytes()
    assert meta["pseudo_boxes"]["run_config"] == json.loads(config_bytes)
    assert meta["pseudo_boxes"]["run_config_sha256"] == W.sha256_file(lost_run["run"] / "config.json")
    assert meta["base"]["name"] == "random" and meta["base"]["sha256"] == "random-seed0" and meta["seed"] == 0
    assert meta["git_revision"] == git_revision() and meta["grad_clip"] == 0 and meta["warmup_steps"] == 1
    assert any(k.startswith("roi_heads.box_head.0.") for k in tensors)  # layer4 is the C4 RoI head
    detector = Detector(trained, device="cpu")
    image = next((lost_run["root"] / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))
    found = detector(image, top_k=3)
    assert len(found.boxes) == len(found.scores) <= 3
    assert list(found.scores) == sorted(found.scores, reverse=True)
    height, width = found.image_size
    for x1, y1, x2, y2 in found.boxes:
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height


def test_locate_eval_run_and_score_with_the_detector(lost_run, trained, capsys):
    image = sorted((lost_run["root"] / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))[0]
    assert discovery_main(["locate", str(image), "--detector", str(trained), "--top-k", "2"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(line) >= {"image", "boxes", "scores", "detector_sha256"} and len(line["boxes"]) <= 2

    out = lost_run["base"] / "cad_run"
    rc = eval_main(["run", "--dataset", "voc07", "--root", str(lost_run["root"]), "--method", f"cad:{trained}",
                    "--out", str(out), "--no-progress", "--workers", "0"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert {"corloc", "ap50", "ap", "detector_sha256"} <= set(results)
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(r["box"] == (r["boxes"][0] if r["boxes"] else None) for r in records)
    capsys.readouterr()
    assert eval_main(["score", "--dataset", "voc07", "--root", str(lost_run["root"]),
                      "--predictions", str(out / "predictions.jsonl")]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["corloc"] == results["corloc"] and scored["ap50"] == results["ap50"]


def test_ap50_of_multi_box_files_from_both_formats(lost_run, tmp_path, capsys):
    dataset = open_dataset("voc07", lost_run["root"])
    perfect = {it.image_id: (it.boxes.tolist(), [0.9] * len(it.boxes)) for it in dataset.items}
    assert detection_score(dataset.items, perfect).ap50 == pytest.approx(100.0)
    first_only = {k: (b[:1], s[:1]) for k, (b, s) in perfect.items()}
    assert detection_score(dataset.items, first_only).ap50 < 100.0
    coco = [{"image_id": k, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
            for k, (b, ss) in perfect.items() for (x1, y1, x2, y2), s in zip(b, ss)]
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    assert eval_main(["score", "--dataset", "voc07", "--root", str(lost_run["root"]), "--predictions", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ap50"] == pytest.approx(100.0) and summary["corloc"] == 100.0


def test_resume_after_stop_and_after_sigkill_equals_an_uninterrupted_run(lost_run, trained, capsys):
    parts = lost_run["base"] / "parts.safetensors"
    common = ["cad", "train", "--run", str(lost_run["run"]), "--backbone", "random", "--iterations", "3", *SMALL]
    assert discovery_main([*common, "--out", str(parts), "--stop-after", "1"]) == 0
    assert not parts.exists() and torch.load(state_path(parts), weights_only=True)["step"] == 1
    assert discovery_main([*common, "--out", str(parts), "--resume"]) == 0
    a, meta_a = read_checkpoint(trained)
    b, meta_b = read_checkpoint(parts)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert meta_a == meta_b and not state_path(parts).exists()

    killed = lost_run["base"] / "killed.safetensors"
    args = [*common, "--out", str(killed), "--checkpoint-every", "1"]
    kill_at_first_state(args, state_path(killed), REPO)
    assert not killed.exists() and 1 <= torch.load(state_path(killed), weights_only=True)["step"] < 3
    assert discovery_main([*args, "--resume"]) == 0
    c, meta_c = read_checkpoint(killed)
    assert all(torch.equal(a[k], c[k]) for k in a) and meta_c == meta_a


def test_unsafe_or_foreign_checkpoints_are_refused_without_running_code(tmp_path, trained, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    pickled = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, pickled)
    with pytest.raises(W.WeightsError, match="refused|not a readable"):
        Detector(pickled)
    assert not (tmp_path / "pwned").exists()
    foreign = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"discovery": json.dumps({"format": "discovery-pul/1"})})
    with pytest.raises(W.WeightsError, match="not a detector checkpoint"):
        Detector(foreign)
    tensors, meta = read_checkpoint(trained)
    broken = tmp_path / "broken.safetensors"
    save_file({k: v for k, v in list(tensors.items())[1:]}, str(broken), metadata={"discovery": json.dumps(meta)})
    assert discovery_main(["locate", str(foreign), "--detector", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "do not fit" in err


def test_bad_inputs_give_one_error_line(lost_run, tmp_path, capsys):
    cases = [
        (["--run", str(tmp_path), "--backbone", "random", "--out", str(tmp_path / "x.safetensors")], "not an `eval run` folder"),
        (["--run", str(lost_run["run"]), "--backbone", "random", "--out", str(tmp_path / "x.pt")], ".safetensors"),
        (["--run", str(lost_run["run"]), "--backbone", "random", "--out", str(tmp_path / "x.safetensors"), "--resume"], "nothing to resume"),
        (["--run", str(lost_run["run"]), "--backbone", "random", "--out", str(tmp_path / "x.safetensors"), "--norm", "frozen",
          "--freeze-at", "9"], "freeze_at"),
    ]
    for args, needle in cases:
        assert discovery_main(["cad", "train", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert eval_main(["run", "--dataset", "voc07", "--root", str(lost_run["root"]), "--method", "cad:/nope.safetensors",
                      "--out", str(tmp_path / "r")]) == 2
    assert "no detector file" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_training_speed(lost_run, tmp_path, capsys):
    out = tmp_path / "gpu.safetensors"
    args = ["cad", "train", "--run", str(lost_run["run"]), "--backbone", "random", "--out", str(out), "--device", "cuda",
            "--iterations", "20", "--batch-size", "4", "--min-size", "480,512", "--min-size-test", "512",
            "--lr", "0.001", "--warmup-steps", "5", "--workers", "2", "--no-progress"]
    started = time.perf_counter()
    assert discovery_main(args) == 0
    err = capsys.readouterr().err
    print(err.strip().splitlines()[-1], f"(wall {time.perf_counter() - started:.1f} s)")
    assert "images/s" in err and Detector(out, device="cuda")(np.zeros((64, 64, 3), np.uint8)).image_size == (64, 64)


def small_object_voc(root: Path, n: int, seed: int = 0, side: int = 128) -> Path:
    """``n`` images ``side`` px square, each with 1-2 bright non-overlapping rectangles or discs of
    25-45 % of the side on a dark textured background: every object is a minority of its image,
    so the whole image is never a correct box (CorLoc 0)."""
    from discovery.eval.synth import SynthImage, SynthObject, write_voc

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    images = []
    for index in range(n):
        fx, fy = rng.uniform(0.05, 0.4, size=2)
        texture = np.sin(xx * fx + rng.uniform(0, 6)) * np.cos(yy * fy + rng.uniform(0, 6))
        img = rng.uniform(40, 110, size=3) + 25 * texture[..., None] + rng.normal(0, 8, size=(side, side, 3))
        taken = np.zeros((side, side), bool)
        objects = []
        for _ in range(int(rng.integers(1, 3))):
            bw, bh = (int(side * v) for v in rng.uniform(0.25, 0.45, size=2))
            x1, y1 = int(rng.integers(0, side - bw)), int(rng.integers(0, side - bh))
            if taken[max(0, y1 - 4):y1 + bh + 4, max(0, x1 - 4):x1 + bw + 4].any():
                continue
            taken[y1:y1 + bh, x1:x1 + bw] = True
            disc = bool(rng.integers(0, 2))
            inside = np.ones((bh, bw), bool)
            if disc:
                v, u = np.mgrid[0:bh, 0:bw]
                inside = ((v - bh / 2 + 0.5) / (bh / 2)) ** 2 + ((u - bw / 2 + 0.5) / (bw / 2)) ** 2 <= 1
            region = img[y1:y1 + bh, x1:x1 + bw]
            region[inside] = rng.uniform(170, 255, size=3) + rng.normal(0, 12, size=(int(inside.sum()), 3))
            rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
            box = (x1 + int(cols[0]), y1 + int(rows[0]), x1 + int(cols[-1]) + 1, y1 + int(rows[-1]) + 1)
            objects.append(SynthObject("disc" if disc else "square", box, False, False))
        images.append(SynthImage(index, np.clip(img, 0, 255).round().astype(np.uint8), tuple(objects)))
    write_voc(root / "VOCdevkit" / "VOC2007", [f"{i + 1:06d}" for i in range(n)], images)
    return root


def test_detector_trained_on_lost_boxes_is_ahead_of_lost(tmp_path, capsys, monkeypatch):
    """LOST+CAD's finding, on CPU: a detector trained on LOST's boxes (one per image) finds the
    objects more often than LOST itself, and finds several per image (AP50).

    LOST runs on a patch-embedding backbone (tests/patch_backbone.py), whose boxes carry object
    information here (a random ResNet50's are the whole image). The detector is torchvision's Faster
    R-CNN on that backbone's map with an MLP RoI head (the layout for non-ResNet50 bases), 200
    iterations of 8 images, ~30 s on one core. Measured on this data (seed 0): LOST 96.9, detector
    100, AP50 100. Over data seeds 0-4 the detector was ahead on four (by 3-8 points) and one image
    behind on one (89.1 vs 90.6): the reference's finding is statistical, this test pins one set.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = small_object_voc(tmp_path / "data", 64)
        lost, cad, out = tmp_path / "lost", tmp_path / "cad", tmp_path / "det.safetensors"
        base = ["--backbone", "module:patch_backbone:patch", "--stride", "16"]
        assert eval_main(["run", "--dataset", "voc07", "--root", str(root), *base, "--out", str(lost), "--no-progress"]) == 0
        lost_corloc = json.loads(capsys.readouterr().out)["corloc"]
        assert lost_corloc >= 70  # LOST's boxes carry object information; the whole image scores 0
        assert discovery_main([
            "cad", "train", "--run", str(lost), "--base", "module:patch_backbone:patch", "--base-stride", "16",
            "--out", str(out), "--iterations", "200", "--batch-size", "8", "--lr", "0.01", "--warmup", "20", "--clip-grad", "5",
            "--min-size", "128", "--min-size-test", "128", "--max-size", "128", "--anchor-sizes", "24,32,48,64",
            "--roi-size", "7", "--head-width", "256", "--rpn-batch", "32", "--roi-batch", "32", "--proposals", "200,50,200,20",
            "--freeze-at", "0", "--workers", "0", "--checkpoint-every", "1000", "--no-progress",
        ]) == 0
        meta = read_checkpoint(out)[1]
        assert meta["detector"]["layout"] == "single" and meta["base"]["stride"] == 16
        assert meta["pipeline_check"] is False and not Detector(out).is_random
        capsys.readouterr()
        assert eval_main(["run", "--dataset", "voc07", "--root", str(root), "--method", f"cad:{out}", "--out", str(cad), "--no-progress"]) == 0
        summary = json.loads(capsys.readouterr().out)
    finally:
        torch.set_num_threads(torch_threads)
    print(f"CorLoc: LOST {lost_corloc}, detector {summary['corloc']}; detector AP50 {summary['ap50']}")
    assert summary["corloc"] >= lost_corloc, f"detector {summary['corloc']} vs LOST {lost_corloc}"
    assert summary["ap50"] >= 60


def test_a_detector_from_a_random_base_or_random_boxes_is_labelled(lost_run, trained, tmp_path, capsys):
    """The pipeline-check label follows provenance: a detector on the ``random`` base, or on the boxes
    of a ``random`` run from another base, says so in its metadata, as ``Detector.is_random`` and in
    ``eval run --method cad:FILE``'s config and results (with the note); and ``cad train`` prints
    its time-left estimate after its first iterations."""
    assert read_checkpoint(trained)[1]["pipeline_check"] is True and Detector(trained).is_random

    out = tmp_path / "patch-on-random-boxes.safetensors"
    assert discovery_main([
        "cad", "train", "--run", str(lost_run["run"]), "--backbone", "module:patch_backbone:patch", "--base-stride", "16",
        "--out", str(out), "--iterations", "4", "--batch-size", "2", "--lr", "0.001", "--min-size", "64",
        "--min-size-test", "64", "--max-size", "128", "--anchor-sizes", "16,32,64", "--roi-size", "4",
        "--head-width", "32", "--rpn-batch", "32", "--roi-batch", "8", "--proposals", "100,20,100,10",
        "--workers", "0", "--no-progress",
    ]) == 0
    err = capsys.readouterr().err
    assert "note: the pseudo-boxes come from a pipeline check" in err
    estimate = [line for line in err.splitlines() if " left at " in line]
    assert len(estimate) == 1 and estimate[0].startswith("cad train: ~") and estimate[0].endswith("s/iteration (4 iterations)")
    assert read_checkpoint(out)[1]["pipeline_check"] is True and Detector(out).is_random

    run = tmp_path / "cad-run"
    assert eval_main(["run", "--dataset", "voc07", "--root", str(lost_run["root"]), "--method", f"cad:{trained}",
                      "--out", str(run), "--no-progress", "--workers", "0"]) == 0
    assert "is a pipeline check, not a model" in capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["random_backbone"] is True
    assert json.loads((run / "results.json").read_text())["random_backbone"] is True
