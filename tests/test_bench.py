"""The benchmark's pieces: its FLOP count against docs/performance.md, and the reference loop as an
oracle for the whole pipeline (decode → pad → features → LOST) on synthetic images."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bench.reference import reference_loop
from bench.data import make_voc
from bench.run import conv_flops
from discovery.backbones import load_backbone
from discovery.localizer import Localizer


@pytest.mark.parametrize(("stride", "gflop"), [(16, 48.6), (32, 32.0)])
def test_backbone_flops_match_the_design_figures(stride, gflop):
    trunk = load_backbone("random", stride=stride).trunk
    assert conv_flops(trunk, (1, 3, 384, 512)) / 1e9 == pytest.approx(gflop, rel=0.02)


def test_reference_loop_boxes_equal_ours(tmp_path, random_backbone):
    from discovery.eval.synth import make_image, write_voc

    rng = np.random.default_rng(3)
    sizes = [(96, 128), (130, 100), (75, 130), (160, 112)]
    images = [make_image(rng, i, size) for i, size in enumerate(sizes)]
    folder = tmp_path / "VOC2007"
    write_voc(folder, [f"{i:06d}" for i in range(len(sizes))], images)
    paths = sorted((folder / "JPEGImages").iterdir())
    trunk = copy.deepcopy(random_backbone.trunk).to(memory_format=torch.contiguous_format)
    reference = reference_loop(paths, trunk, random_backbone.mean, random_backbone.std, k=100)
    ours = Localizer(random_backbone, max_side=None)
    assert [list(ours(p).box) for p in paths] == reference
    assert len({tuple(b) for b in reference}) > 1  # not the same box everywhere


def test_make_voc_writes_voc_sized_images(tmp_path):
    paths = make_voc(tmp_path, 3)
    assert [p.name for p in paths] == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert (tmp_path / "VOCdevkit" / "VOC2007" / "Annotations" / "000001.xml").is_file()


def test_device_figures_run_on_cpu(tmp_path, capsys):
    """The GPU table's code path, on the CPU at a small size (the figures are not meaningful here)."""
    from bench.pipeline import device_figures
    from bench.report import gpu_rows
    from discovery.eval.datasets import open_dataset

    make_voc(tmp_path, 3)
    items = open_dataset("voc07", tmp_path).items
    figures = device_figures(items, "cpu", workers=0, batch=2, size=(64, 96), repeats=1)
    for key in ("trunk_fp32_img_s", "trunk_bf16_img_s", "input_img_s", "lost_img_s"):
        assert figures[key] > 0, key
    assert figures["machine"] and figures["date"] and figures["fp32_math"] == "ieee"
    rows = gpu_rows({**figures, "end_to_end_img_s": 1.0, "end_to_end_batch": 1, "end_to_end_images": 3})
    assert any("of the fp32 trunk" in note for _, _, note in rows)


def test_bench_refuses_a_device_this_machine_lacks(capsys):
    from bench.run import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["--quick", "--device", "cuda"]) == 2
    assert capsys.readouterr().err.startswith("error: --device cuda: CUDA is not available")


def test_vit_section_runs_and_its_boxes_agree(tmp_path):
    """The ViT section's code path on a few images (its timings mean nothing here)."""
    import argparse

    from bench.vit import boxes_equal, vit_rows, vit_section

    paths = make_voc(tmp_path, 8)
    args = argparse.Namespace(batch_size=None, workers=0, device="cpu", quick=True)
    figures = vit_section(tmp_path, paths, 2, args)
    assert boxes_equal(figures) and figures["images"] == 2
    for method in ("lost", "tokencut"):
        assert figures[method]["speedup"] > 0 and 0 < figures[method]["trunk_share"]
    assert 0 < figures["eigen_share"] < 1
    rows = vit_rows(figures)
    assert any(name == "ViT TokenCut: speedup" for name, _, _ in rows)
    assert any(value == "not measured" for _, value, _ in rows)  # no GPU here
