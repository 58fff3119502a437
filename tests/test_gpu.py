"""Every command end to end on CUDA (``pytest -m gpu``; skipped where CUDA is absent).

Small synthetic data (``python -m eval synth``) and the seeded ``random`` backbone: these check
that each path runs on the GPU and agrees with the CPU, not accuracy. ``bench/gpu_check.sh`` runs
this file and the GPU bench and keeps the logs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = "cuda"


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from discovery.eval.cli import main

    root = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(root), "--n", "24", "--seed", "1"]) == 0
    return root


def _boxes(run_dir: Path) -> dict[str, list[float]]:
    return {r["image_id"]: r["box"] for r in map(json.loads, (run_dir / "predictions.jsonl").read_text().splitlines())}


def test_device_batch_is_bit_identical_to_the_cpu_one():
    from discovery.images import normalize_and_pad, normalize_and_pad_batch
    from discovery.weights import IMAGENET_MEAN, IMAGENET_STD

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(375, 500), (370, 497), (369, 500)]]
    batch = normalize_and_pad_batch(images, IMAGENET_MEAN, IMAGENET_STD, 16, CUDA)
    assert batch.is_cuda
    for got, rgb in zip(batch.cpu(), images):
        assert torch.equal(got, normalize_and_pad(rgb, IMAGENET_MEAN, IMAGENET_STD, 16))


def test_eval_run_on_cuda_matches_cpu_and_records_precision(synth, tmp_path):
    from discovery.eval.cli import main

    common = ["run", "--dataset", "voc07", "--root", str(synth), "--backbone", "random", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "cpu")]) == 0
    assert main([*common, "--device", CUDA, "--workers", "2", "--batch-size", "4", "--out", str(tmp_path / "gpu")]) == 0
    config = json.loads((tmp_path / "gpu" / "config.json").read_text())
    assert config["precision"] == "fp32" and config["fp32_math"] == "ieee"
    results = json.loads((tmp_path / "gpu" / "results.json").read_text())
    assert results["device"].startswith("cuda") and results["images_this_run"] == 24
    cpu, gpu = _boxes(tmp_path / "cpu"), _boxes(tmp_path / "gpu")
    assert cpu.keys() == gpu.keys()
    agree = sum(cpu[k] == gpu[k] for k in cpu)
    assert agree >= 0.9 * len(cpu), f"GPU fp32 boxes equal CPU boxes on {agree}/{len(cpu)}"
    # bf16 autocast and the TF32 opt-in run and are recorded
    assert main([*common, "--device", CUDA, "--precision", "bf16", "--tf32", "--out", str(tmp_path / "bf16")]) == 0
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["precision"] == "bf16" and config["fp32_math"] == "tf32"
    # resume on the GPU: a second run into the same folder does nothing new
    assert main([*common, "--device", CUDA, "--out", str(tmp_path / "gpu")]) == 0
    assert json.loads((tmp_path / "gpu" / "results.json").read_text())["images_resumed"] == 24


def test_reference_loop_boxes_equal_ours_on_cuda(synth):
    from bench.reference import reference_loop
    from discovery.backbones import load_backbone
    from discovery.localizer import Localizer
    from discovery.precision import fp32_math

    backbone = load_backbone("random", device=CUDA)
    paths = sorted((synth / "VOCdevkit" / "VOC2007" / "JPEGImages").iterdir())[:8]
    trunk = copy.deepcopy(backbone.trunk).to(memory_format=torch.contiguous_format)
    with fp32_math(False):
        reference = reference_loop(paths, trunk, backbone.mean, backbone.std, device=CUDA)
    ours = Localizer(backbone, max_side=None)
    assert [list(ours(p).box) for p in paths] == reference


def test_locate_and_explain_with_sanity_check_on_cuda(tmp_path, capsys, textured_image):
    from discovery.cli import main

    image = tmp_path / "img.png"
    Image.fromarray(textured_image).save(image)
    assert main(["locate", str(image), "--backbone", "random", "--device", CUDA, "--out-dir", str(tmp_path / "o")]) == 0
    gpu_box = json.loads(capsys.readouterr().out)["box"]
    assert main(["locate", str(image), "--backbone", "random"]) == 0
    assert json.loads(capsys.readouterr().out)["box"] == gpu_box
    for method in ("gradcam", "eigencam"):
        code = main(["explain", str(image), "--backbone", "random", "--device", CUDA, "--method", method,
                     "--sanity-check", "--out-dir", str(tmp_path / "x")])
        out = capsys.readouterr()
        assert code == 0, out.err
        record = json.loads(out.out)
        assert len(record["sanity"]) >= 5 and "spearman" in out.err


def test_pul_train_on_cuda_batch_64_stays_finite(tmp_path, capsys):
    """The reported blow-up: batch 64 from ``random`` at the default lr, now guarded."""
    from discovery.cli import main
    from discovery.pul import read_dynamics

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(128):  # two steps of 64 per epoch
        img = rng.integers(0, 90, (150, 200, 3), dtype=np.uint8)
        img[40:110, 60:140] = rng.integers(150, 255, 3, dtype=np.uint8)
        Image.fromarray(img).save(images / f"{i:03d}.jpg")
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"pul-{precision}.safetensors"
        csv = tmp_path / f"{precision}.csv"
        code = main(["pul", "train", "--base", "random", "--images", str(images), "--device", CUDA, "--batch-size", "64",
                     "--epochs", "3", "--no-progress", "--precision", precision, "--out", str(out), "--log-dynamics", str(csv)])
        err = capsys.readouterr().err
        assert code == 0, err
        assert "images/s" in err
        assert np.isfinite(read_dynamics(csv)["ce"]).all()
    assert main(["locate", str(next(images.iterdir())), "--backbone", f"pul:{out}", "--device", CUDA]) == 0


def test_app_engine_on_cuda(textured_image):
    from discovery.app.engine import Engine

    analysis = Engine(device=CUDA, max_side=160).analyze(textured_image, "random", 16, 100, "gradcam")
    cpu = Engine(max_side=160).analyze(textured_image, "random", 16, 100, "gradcam")
    assert analysis.box_image.shape == textured_image.shape
    assert analysis.record["lost"]["box"] == cpu.record["lost"]["box"]


def test_bench_device_figures_on_cuda(synth):
    from bench.pipeline import device_figures
    from discovery.eval.datasets import open_dataset

    items = open_dataset("voc07", synth).items
    figures = device_figures(items, CUDA, workers=2, batch=8, repeats=2)
    assert figures["machine"] == torch.cuda.get_device_name()
    assert figures["trunk_fp32_img_s"] > 0 and figures["trunk_bf16_img_s"] > 0
    assert figures["input_img_s"] > 0 and figures["lost_img_s"] > 0


def test_tokencut_batched_on_cuda_equals_the_cpu_solve():
    # the GPU solves the full batched eigh, the CPU three eigenpairs per graph: same boxes and seeds
    from discovery.tokencut import localize_batch

    gen = torch.Generator().manual_seed(0)
    feats = torch.relu(torch.randn(4, 64, 12, 16, generator=gen) - 0.5)
    feats[:, :, 3:8, 4:11] += torch.relu(torch.randn(4, 64, 1, 1, generator=gen)) * 2
    sizes = [(190, 250)] * 4
    cpu = localize_batch(feats, sizes, stride=16)
    gpu = localize_batch(feats.to(CUDA), sizes, stride=16)
    for a, b in zip(cpu, gpu):
        assert a.box == b.box and a.seed == b.seed and torch.equal(a.mask, b.mask)
        torch.testing.assert_close(a.eigenvector, b.eigenvector.cpu(), rtol=0, atol=1e-9)


def test_vit_eval_run_on_cuda_matches_cpu(synth, tmp_path):
    from discovery.eval.cli import main

    common = ["run", "--dataset", "voc07", "--root", str(synth), "--backbone", "random-vits16", "--no-progress",
              "--method", "tokencut"]
    assert main([*common, "--out", str(tmp_path / "cpu")]) == 0
    assert main([*common, "--device", CUDA, "--workers", "2", "--batch-size", "4", "--out", str(tmp_path / "gpu")]) == 0
    cpu, gpu = _boxes(tmp_path / "cpu"), _boxes(tmp_path / "gpu")
    # IEEE fp32 on both, but other kernels: allow a box or two at rounding-level ties
    assert sum(cpu[i] == gpu[i] for i in cpu) >= len(cpu) - 2
