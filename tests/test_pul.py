"""PUL trainer: labels, sharding, KL at step 0, tiny end-to-end runs, resume, bad input.

Bases are random-init ResNet50 state dicts written by the tests (BatchNorm statistics calibrated
on noise so the eval-mode network is well scaled); nothing is downloaded.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kill_at_first_state
from PIL import Image
from safetensors import safe_open
from torch import nn
from torchvision.models import resnet50

from discovery import Localizer, load_backbone
from discovery import weights as W
from discovery.cli import main
from discovery.pul import (
    build_models,
    distill_kl,
    function_speed,
    read_dynamics,
    state_path,
)
from discovery.provenance import git_revision
from discovery.pul.data import PULImages, labels_digest, list_folder, random_labels
from discovery.sampling import rank_batches, steps_per_epoch

REPO = Path(__file__).resolve().parent.parent
TRAIN = ["pul", "train", "--no-progress", "--workers", "0", "--input-size", "32", "--batch-size", "4", "--lr", "0.001", "--epochs", "1"]


def _base_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = resnet50()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        net.train()(torch.randn(8, 3, 64, 64))
    return net.state_dict()


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """``fc``: a ResNet50 .pth with classifier; ``headless``: the same without ``fc.*``."""
    folder = tmp_path_factory.mktemp("bases")
    state = _base_state()
    torch.save(state, folder / "base_fc.pth")
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, folder / "base_headless.pth")
    return {"fc": folder / "base_fc.pth", "headless": folder / "base_headless.pth"}


def make_images(folder: Path, n: int = 8, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = 48 + 8 * (i % 4), 64 + 8 * (i % 3)
        img = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
        img[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = rng.integers(150, 255, 3, dtype=np.uint8)
        Image.fromarray(img).save(folder / f"img_{i:02d}.{'png' if i % 2 else 'jpg'}")
    return folder


@pytest.fixture
def images(tmp_path) -> Path:
    return make_images(tmp_path / "images")


def run(capsys, *args) -> tuple[int, str, str]:
    rc = main([*map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata, less the run's measured speed (the one thing that varies between runs)."""
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["discovery"])
        assert meta.pop("throughput")["images_per_s"] > 0
        return {k: fh.get_tensor(k) for k in fh.keys()}, meta


# --- data ------------------------------------------------------------------------------------


def test_labels_are_seeded_uniform_and_keyed_by_position():
    a = random_labels(500, 3, seed=7)
    assert a.dtype == torch.int64 and a.shape == (500,)
    assert torch.equal(a, random_labels(500, 3, seed=7))
    assert torch.equal(random_labels(20, 3, seed=7), a[:20])  # label i depends on i only
    assert not torch.equal(a, random_labels(500, 3, seed=8))
    counts = torch.bincount(a, minlength=3)
    assert counts.min() > 120  # uniform over 3 classes, every class used
    assert set(random_labels(400, 5, 0).tolist()) == set(range(5))
    assert labels_digest(a) == labels_digest(a.clone()) != labels_digest(random_labels(500, 3, seed=8))


def test_batches_cover_the_epoch_and_shard_the_global_batch():
    usable = [0, 1, 2, 4, 5, 6, 7, 9, 10, 11]  # 3 and 8 unreadable
    single = rank_batches(usable, seed=3, epoch=0, batch_size=4)
    assert len(single) == steps_per_epoch(len(usable), 4) == 3
    flat = [i for batch in single for i, _ in batch]
    assert sorted(flat) == usable and all(e == 0 for batch in single for _, e in batch)
    assert flat != [i for b in rank_batches(usable, 3, 1, 4) for i, _ in b]  # a new order each epoch
    assert single == rank_batches(usable, 3, 0, 4)
    assert rank_batches(usable, 3, 0, 4, start=1) == single[1:]
    ranks = [rank_batches(usable, 3, 0, 4, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    for b, batch in enumerate(single):
        shares = [ranks[r][b] for r in range(2)]
        assert len(shares[0]) == len(shares[1])
        assert sorted(shares[0] + shares[1]) == sorted(batch)  # 10 images: no padding needed
    odd = [rank_batches(usable[:9], 3, 0, 4, rank=r, world_size=2) for r in range(2)]
    assert [len(b) for b in odd[0]] == [len(b) for b in odd[1]]  # padded to 10
    shared = sorted(i for r in odd for b in r for i, _ in b)
    assert len(shared) == 10 and set(shared) == set(usable[:9])


def test_samples_do_not_depend_on_the_order_they_are_asked_in(images):
    listed = list_folder(images)
    labels = random_labels(len(listed), 3, seed=1)
    ds = PULImages(listed, labels, input_size=64, mean=W.IMAGENET_MEAN, std=W.IMAGENET_STD, seed=1)
    keys = [(i, 0) for i in range(len(listed))]
    forward = {k: ds[k] for k in keys}
    for k in reversed(keys):
        x, y, i = ds[k]
        assert torch.equal(x, forward[k][0]) and y == forward[k][1] == int(labels[k[0]]) and i == k[0]
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert any(not torch.equal(ds[(i, 0)][0], ds[(i, 1)][0]) for i in range(len(listed)))  # re-augmented per epoch
    assert torch.equal(ds[(0, -1)][0], ds[(0, -1)][0])


def test_listing_is_sorted_recursive_and_fingerprinted(tmp_path):
    make_images(tmp_path / "b", 2)
    make_images(tmp_path / "a" / "deep", 2, seed=1)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    shutil.copy(tmp_path / "b" / "img_00.jpg", tmp_path / ".hidden" / "x.jpg")
    listed = list_folder(tmp_path)
    assert listed.relative == ("a/deep/img_00.jpg", "a/deep/img_01.png", "b/img_00.jpg", "b/img_01.png")
    import hashlib

    assert listed.fingerprint == hashlib.sha256("\n".join(listed.relative).encode()).hexdigest()


# --- model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fc", "headless"])
def test_kl_is_exactly_zero_at_step_zero(bases, kind):
    base = load_backbone(str(bases[kind]), stride=32)
    student, teacher = build_models(base, classes=3, width=32, seed=0)
    student, teacher = student.to(memory_format=torch.channels_last), teacher.to(memory_format=torch.channels_last)
    x = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        t = teacher(x)
    logits, pred = student(x)
    assert logits.shape == (3, 3) and pred.shape == t.shape == (3, 1000)
    kl = distill_kl(pred, t, 4.0)
    assert kl.item() == 0.0
    assert torch.equal(student.head.weight, teacher.head.weight)
    assert student.head.weight.requires_grad == (kind == "fc")  # headless: the shared random head is frozen
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.1)
    (nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])) + kl).backward()
    opt.step()
    with torch.no_grad():
        assert distill_kl(student(x)[1], teacher(x), 4.0).item() > 0
        assert torch.equal(teacher(x), t)  # the teacher stays frozen
        assert function_speed(student(x)[0], logits.detach()) > 0


# --- end-to-end runs --------------------------------------------------------------------------


def test_tiny_run_from_registry_name_loads_in_localizer(bases, images, tmp_path, monkeypatch, capsys, textured_image):
    digest = W.sha256_file(bases["fc"])
    weights_dir = Path(W.default_weights_dir())
    weights_dir.mkdir(parents=True, exist_ok=True)
    (weights_dir / "resnet50-0676ba61.pth").symlink_to(bases["fc"])
    monkeypatch.setitem(W.REGISTRY, "imagenet", dataclasses.replace(W.REGISTRY["imagenet"], sha256_prefix=digest[:8]))
    out, dyn, png = tmp_path / "pul.safetensors", tmp_path / "dyn.csv", tmp_path / "dyn.png"
    rc, stdout, err = run(capsys, *TRAIN, "--backbone", "imagenet", "--images", images, "--out", out, "--log-dynamics", dyn)
    assert rc == 0, err
    assert f"pul:{out}" in stdout

    tensors, meta = read_checkpoint(out)
    base = torch.load(bases["fc"], weights_only=True)
    assert set(tensors) == set(base)  # torchvision names, fc kept, no projector
    assert not any(k.startswith("projector") for k in tensors)
    assert not torch.equal(tensors["conv1.weight"], base["conv1.weight"])
    assert not torch.equal(tensors["layer4.2.conv3.weight"], base["layer4.2.conv3.weight"])
    assert torch.equal(tensors["layer3.0.bn1.running_var"], base["layer3.0.bn1.running_var"])  # BN in eval mode
    assert meta["base"]["name"] == "imagenet" and meta["base"]["sha256"] == digest
    assert meta["git_revision"] == git_revision()
    assert meta["images"]["count"] == 8 and meta["images"]["skipped"] == 0
    assert meta["images"]["fingerprint_sha256"] == list_folder(images).fingerprint
    for key in ("epochs", "classes", "temperature", "kl_weight", "seed", "lr", "momentum", "weight_decay",
                "input_size", "projector_width", "bn_mode", "augmentation", "library_version", "steps"):
        assert key in meta, key
    assert (meta["epochs"], meta["classes"], meta["temperature"], meta["steps"]) == (1, 3, 4.0, 2)
    assert not state_path(out).exists()

    loc = Localizer(backbone=f"pul:{out}", max_side=None)
    assert loc.backbone.info.has_classifier and loc.backbone.info.metadata["kind"] == "pul"
    box = loc(textured_image).box
    assert 0 <= box[0] < box[2] <= 128 and 0 <= box[1] < box[3] <= 96
    assert torch.equal(loc.backbone.trunk[0].weight.cpu().contiguous(), tensors["conv1.weight"])

    with open(dyn, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["step", "epoch", "ce", "kl", "loss", "lr", "hist_0", "hist_1", "hist_2", "speed", "grad_norm"]
    assert [int(r["step"]) for r in rows] == [0, 1]
    assert float(rows[0]["kl"]) == 0.0  # student == teacher before the first update
    assert all(sum(int(r[f"hist_{c}"]) for c in range(3)) == 4 for r in rows)
    assert all(float(r["speed"]) > 0 and np.isfinite(float(r["ce"])) for r in rows)
    assert float(rows[0]["loss"]) == pytest.approx(float(rows[0]["ce"]))

    rc, _, err = run(capsys, "pul", "plot", dyn, "--out", png)
    assert rc == 0, err
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_headless_base_skips_unreadable_images(bases, images, tmp_path, capsys):
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (images / "empty.png").write_bytes(b"")
    out = tmp_path / "headless.safetensors"
    rc, _, err = run(capsys, *TRAIN, "--base", bases["headless"], "--images", images, "--out", out, "--classes", "4")
    assert rc == 0, err
    assert err.startswith("note: --base is now --backbone")  # the old spelling still works
    assert "skipping 2 unreadable image(s) of 10" in err
    tensors, meta = read_checkpoint(out)
    assert not any(k.startswith("fc.") for k in tensors)
    assert meta["images"]["skipped"] == 2 and meta["images"]["count"] == 8 and meta["images"]["listed"] == 10
    assert sorted(meta["images"]["skipped_files"]) == ["broken.jpg", "empty.png"]
    assert "random linear head" in meta["kl_distribution"] and meta["classes"] == 4
    backbone = load_backbone(f"pul:{out}")
    assert backbone.fc is None and backbone.stride == 16


def _run_to_end(capsys, *args) -> None:
    rc, _, err = run(capsys, *args)
    assert rc == 0, err


def test_resume_after_interruption_equals_uninterrupted_run(bases, images, tmp_path, capsys):
    common = [*TRAIN[:-2], "--epochs", "2", "--backbone", bases["fc"], "--images", images, "--seed", "5"]
    full, parts = tmp_path / "full.safetensors", tmp_path / "parts.safetensors"
    _run_to_end(capsys, *common, "--out", full, "--log-dynamics", tmp_path / "full.csv")

    rc, _, err = run(capsys, *common, "--out", parts, "--log-dynamics", tmp_path / "parts.csv", "--stop-after", "1")
    assert rc == 0 and "continue with --resume" in err and not parts.exists()
    state = torch.load(state_path(parts), weights_only=True)
    assert state["step"] == 1 and "optimizer" in state and isinstance(state["rng"]["torch"], torch.Tensor)
    # from the middle of epoch 0, across the epoch boundary, to the end; decoding in a worker process
    _run_to_end(capsys, *common, "--out", parts, "--log-dynamics", tmp_path / "parts.csv", "--resume", "--workers", "0")
    assert not state_path(parts).exists()

    a, meta_a = read_checkpoint(full)
    b, meta_b = read_checkpoint(parts)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert meta_a == meta_b
    assert (tmp_path / "full.csv").read_text() == (tmp_path / "parts.csv").read_text()
    assert len(read_dynamics(tmp_path / "full.csv")["step"]) == 4

    # a real SIGKILL after the first periodic checkpoint, then --resume
    killed = tmp_path / "killed.safetensors"
    args = [*common, "--out", killed, "--checkpoint-every", "1"]
    kill_at_first_state(args, state_path(killed), REPO)
    assert not killed.exists() and 1 <= torch.load(state_path(killed), weights_only=True)["step"] < 4
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()
    torn = tmp_path / f".{state_path(killed).name}.tmp{ended.pid}"  # what a kill inside an atomic write leaves
    torn.write_bytes(b"torn")
    _run_to_end(capsys, *args, "--resume")
    assert not torn.exists()
    c, meta_c = read_checkpoint(killed)
    assert all(torch.equal(a[key], c[key]) for key in a) and meta_c == meta_a


def test_two_process_gloo_run_matches_a_single_process(bases, images, tmp_path, capsys):
    common = [*TRAIN, "--backbone", bases["fc"], "--images", images, "--log-dynamics"]
    single, ddp = tmp_path / "single.safetensors", tmp_path / "ddp.safetensors"
    _run_to_end(capsys, *common, tmp_path / "single.csv", "--out", single)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "discovery", *map(str, [*common, tmp_path / "ddp.csv", "--out", ddp])]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    a, meta_a = read_checkpoint(single)
    b, meta_b = read_checkpoint(ddp)
    assert meta_b["world_size"] == 2 and meta_a["world_size"] == 1
    assert meta_a["labels"]["sha256"] == meta_b["labels"]["sha256"]
    assert meta_a["images"] == meta_b["images"] and meta_a["steps"] == meta_b["steps"] == 2
    # the global batch is split evenly, so DDP's averaged gradient is the single-process one
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4, msg=key)
    da, db = read_dynamics(tmp_path / "single.csv"), read_dynamics(tmp_path / "ddp.csv")
    assert np.array_equal(da["hist_0"] + da["hist_1"] + da["hist_2"], db["hist_0"] + db["hist_1"] + db["hist_2"])
    np.testing.assert_allclose(da["ce"], db["ce"], rtol=1e-3)
    assert not any(tmp_path.glob(".*tmp*"))


def test_resume_from_a_different_configuration_is_refused(bases, images, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    common = ["--backbone", bases["fc"], "--images", images, "--out", out]
    rc, _, err = run(capsys, *TRAIN, *common, "--stop-after", "1")
    assert rc == 0 and state_path(out).is_file()
    rc, _, err = run(capsys, *TRAIN, *common, "--resume", "--classes", "4")
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error:") and "classes" in err and "different run" in err
    rc, _, err = run(capsys, *TRAIN, *common)
    assert rc == 2 and "--resume" in err and err.count("\n") == 1


def write_voc(root: Path, ids: list[str]) -> None:
    folder = root / "VOCdevkit" / "VOC2007"
    (folder / "ImageSets" / "Main").mkdir(parents=True)
    (folder / "Annotations").mkdir()
    make_images(folder / "JPEGImages", len(ids))
    for i, image_id in enumerate(ids):
        src = folder / "JPEGImages" / f"img_{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.open(src).convert("RGB").save(folder / "JPEGImages" / f"{image_id}.jpg")
        src.unlink()
        (folder / "Annotations" / f"{image_id}.xml").write_text(
            "<annotation><object><name>x</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>"
            "<ymax>9</ymax></bndbox></object></annotation>"
        )
    (folder / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(reversed(ids)) + "\n")


def test_dataset_option_uses_the_split_image_list(bases, tmp_path, capsys):
    pytest.importorskip("discovery.eval.datasets")
    ids = [f"{n:06d}" for n in (5, 7, 9, 12, 17)]
    write_voc(tmp_path / "voc", ids)
    make_images(tmp_path / "voc" / "VOCdevkit" / "VOC2007" / "JPEGImages" / "extra", 2)  # not in the split
    out = tmp_path / "voc.safetensors"
    rc, _, err = run(capsys, *TRAIN, "--backbone", bases["fc"], "--dataset", "voc07", "--root", tmp_path / "voc", "--out", out)
    assert rc == 0, err
    _, meta = read_checkpoint(out)
    import hashlib

    expected = hashlib.sha256("\n".join(f"JPEGImages/{i}.jpg" for i in ids).encode()).hexdigest()
    assert meta["images"]["count"] == 5 and meta["images"]["fingerprint_sha256"] == expected
    rc, _, err = run(capsys, *TRAIN, "--backbone", bases["fc"], "--dataset", "voc07", "--root", tmp_path / "nowhere", "--out", out, "--overwrite")
    assert rc == 2 and err.startswith("error:")


# --- bad input ---------------------------------------------------------------------------------


def _bad_cases(tmp: Path, bases: dict[str, Path], images: Path) -> dict[str, tuple[list, str]]:
    (tmp / "empty").mkdir()
    (tmp / "unreadable").mkdir()
    (tmp / "unreadable" / "a.jpg").write_bytes(b"garbage")
    (tmp / "unreadable" / "b.png").write_bytes(b"")
    (tmp / "garbage.pth").write_bytes(b"this is no checkpoint")
    (tmp / "exists.safetensors").write_bytes(b"x")
    (tmp / "stale.safetensors.state.pt").write_bytes(b"x")
    fc = str(bases["fc"])
    return {
        "empty folder": (["--backbone", fc, "--images", tmp / "empty"], "no images in"),
        "no folder": (["--backbone", fc, "--images", tmp / "missing"], "not a folder"),
        "unreadable images": (["--backbone", fc, "--images", tmp / "unreadable"], "none of the 2 images"),
        "garbage base": (["--backbone", tmp / "garbage.pth", "--images", images], "not a readable PyTorch weights file"),
        "missing base": (["--backbone", "imagenet-v2", "--images", images], "resnet50-11ad3fa6.pth"),  # the file to put in place
        "unknown base": (["--backbone", "resnet18", "--images", images], "unknown backbone"),
        "one class": (["--backbone", fc, "--images", images, "--classes", "1"], "--classes must be at least 2"),
        "output exists": (["--backbone", fc, "--images", images, "--out", tmp / "exists.safetensors"], "--overwrite"),
        "stale state": (["--backbone", fc, "--images", images, "--out", tmp / "stale.safetensors"], "--resume"),
        "nothing to resume": (["--backbone", fc, "--images", images, "--resume"], "nothing to resume"),
        "bad suffix": (["--backbone", fc, "--images", images, "--out", tmp / "out.pt"], ".safetensors"),
        "dataset without root": (["--backbone", fc, "--dataset", "voc07"], "--root"),
        "zero epochs": (["--backbone", fc, "--images", images, "--epochs", "0"], "--epochs"),
        "bad device": (["--backbone", fc, "--images", images, "--device", "tpu9"], "--device"),
        "no backbone": (["--images", images], "--backbone is required"),
    }


def test_each_bad_input_gives_one_error_line(bases, images, tmp_path, capsys):
    for name, (args, needle) in _bad_cases(tmp_path, bases, images).items():
        if "--out" not in args:
            args = [*args, "--out", tmp_path / "never.safetensors"]
        rc, _, err = run(capsys, *TRAIN, *args)
        assert rc == 2, (name, err)
        assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err, (name, err)
        assert needle in err, (name, err)
        assert not (tmp_path / "never.safetensors").exists()
    assert (tmp_path / "exists.safetensors").read_bytes() == b"x"


def test_plot_refuses_what_is_not_a_dynamics_csv(tmp_path, capsys):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    for path, needle in ((tmp_path / "missing.csv", "no such file"), (tmp_path / "other.csv", "not a PUL dynamics CSV")):
        rc, _, err = run(capsys, "pul", "plot", path, "--out", tmp_path / "x.png")
        assert rc == 2 and err.startswith("error:") and needle in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


# --- stability guard ------------------------------------------------------------------------------


def test_warmup_and_decay_schedule():
    from discovery.pul.model import lr_factor

    assert lr_factor(0, 100, decay=False) == 1.0
    assert [lr_factor(s, 100, decay=False, warmup_steps=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(50, 100, decay=True, warmup_steps=4) == pytest.approx(6 ** -0.75)


def test_guard_keeps_a_random_base_finite_at_the_default_lr(tmp_path, capsys):
    """The reported blow-up, reproduced on the CPU: ``random`` base, default --lr, 64 px crops.
    Unguarded, cross-entropy goes from ~6 to ~1e4-1e5 after one step and then NaN; the default
    guard (gradient clipping, warm-up) keeps it finite and falling."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        img = rng.integers(0, 90, (72, 96, 3), dtype=np.uint8)
        img[18:54, 30:70] = rng.integers(150, 255, 3, dtype=np.uint8)
        Image.fromarray(img).save(images / f"{i:02d}.png")
    common = ["pul", "train", "--no-progress", "--workers", "0", "--input-size", "64", "--batch-size", "8",
              "--epochs", "3", "--backbone", "random", "--images", images]
    rc, _, err = run(capsys, *common, "--grad-clip", "0", "--warmup-steps", "0", "--out", tmp_path / "bad.safetensors",
                     "--log-dynamics", tmp_path / "bad.csv")
    assert rc == 2 and "non-finite" in err
    assert read_dynamics(tmp_path / "bad.csv")["ce"][1] > 100  # the blow-up
    out = tmp_path / "good.safetensors"
    rc, _, err = run(capsys, *common, "--out", out, "--log-dynamics", tmp_path / "good.csv")
    assert rc == 0, err
    assert "images/s" in err
    dyn = read_dynamics(tmp_path / "good.csv")
    assert np.isfinite(dyn["ce"]).all() and dyn["ce"][-1] < dyn["ce"][0] < 100
    assert (dyn["grad_norm"] > 2.0).any()  # the clip was needed
    _, meta = read_checkpoint(out)
    assert meta["grad_clip"] == 2.0 and meta["warmup_steps"] == 20 and "clipped to 2.0" in meta["stability_guard"]
    assert "warm-up" in meta["lr_schedule"] and meta["precision"] == "fp32" and meta["fp32_math"] == "ieee"


def test_bf16_training_runs_and_is_recorded(tmp_path, capsys, bases):
    images = make_images(tmp_path / "images", n=4)
    out = tmp_path / "bf16.safetensors"
    rc, _, err = run(capsys, *TRAIN, "--backbone", bases["fc"], "--images", images, "--precision", "bf16", "--out", out)
    assert rc == 0, err
    _, meta = read_checkpoint(out)
    assert meta["precision"] == "bf16"
    with pytest.raises(SystemExit) as refused:  # the shared option's validator: argparse's usage and error
        main([*map(str, TRAIN), "--backbone", str(bases["fc"]), "--images", str(images), "--grad-clip", "-1",
              "--out", str(tmp_path / "x.safetensors")])
    assert refused.value.code == 2 and "--grad-clip: must be 0 or more" in capsys.readouterr().err


def test_the_trainer_does_not_reach_the_harness():
    """``discovery.pul.train`` gets its CorLoc hook as a parameter: importing it loads no harness module."""
    code = ("import sys, discovery.pul.train, discovery.cad; "
            "print([m for m in sys.modules if m == 'eval' or m.startswith(('eval.', 'discovery.eval'))])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- what a new user trips over ---------------------------------------------------------------------


def test_a_pul_checkpoint_of_random_is_labelled_a_pipeline_check_down_the_chain(bases, images, tmp_path, capsys):
    """PUL from ``random`` (and PUL of that) records ``pipeline_check``; ``eval run`` on it says
    ``random_backbone: true`` in config.json and results.json and prints the note; a real base does not."""
    from discovery.eval.cli import main as eval_main
    from discovery.eval.synth import make_synthetic

    first, second, real = tmp_path / "first.safetensors", tmp_path / "second.safetensors", tmp_path / "real.safetensors"
    rc, _, err = run(capsys, *TRAIN, "--backbone", "random", "--images", images, "--out", first)
    assert rc == 0 and "note: base 'random' is a pipeline check" in err, err
    rc, _, err = run(capsys, *TRAIN, "--backbone", f"pul:{first}", "--images", images, "--out", second)
    assert rc == 0 and f"note: base 'pul:{first}' is a pipeline check" in err, err
    rc, _, err = run(capsys, *TRAIN, "--backbone", bases["fc"], "--images", images, "--out", real)
    assert rc == 0 and "pipeline check" not in err, err
    assert [read_checkpoint(p)[1]["pipeline_check"] for p in (first, second, real)] == [True, True, False]
    assert load_backbone(f"pul:{second}").info.is_random and not load_backbone(f"pul:{real}").info.is_random

    made = make_synthetic(tmp_path / "data", n=2, seed=0)
    for weights, expected in ((second, True), (real, False)):
        out = tmp_path / f"run-{weights.stem}"
        assert eval_main(["run", "--dataset", "voc07", "--root", str(made.out), "--backbone", f"pul:{weights}",
                          "--out", str(out), "--no-progress", "--workers", "0"]) == 0
        err = capsys.readouterr().err
        assert json.loads((out / "results.json").read_text())["random_backbone"] is expected
        assert json.loads((out / "config.json").read_text()).get("random_backbone", False) is expected
        assert (f"note: backbone 'pul:{weights}' is a pipeline check, not a model" in err) is expected, err


def test_checkpoints_from_before_the_key_are_judged_by_their_base():
    from discovery.backbone import BackboneInfo, is_pipeline_check

    assert is_pipeline_check({"kind": "pul", "base": {"name": "random", "sha256": "random-seed0"}})
    assert not is_pipeline_check({"kind": "pul", "base": {"name": "pul:x", "sha256": "ab12"}})
    assert is_pipeline_check({"kind": "cad", "base": {"sha256": "ab12"}, "pseudo_boxes": {"run_config": {"weights_sha256": "random-seed0"}}})
    assert is_pipeline_check({"base": {"sha256": "ab12"}, "pseudo_boxes": {"run_config": {"random_backbone": True}}})
    assert not is_pipeline_check({"pipeline_check": False, "base": {"sha256": "random-seed0"}})  # the key decides
    assert not is_pipeline_check({"base": "not a mapping"})
    assert BackboneInfo("pul:x", "ab12", True, metadata={"pipeline_check": True}).is_random
    assert BackboneInfo("random", "random-seed3", True).is_random and not BackboneInfo("x", "ab12", True).is_random


def test_plot_has_integer_step_ticks(tmp_path):
    from discovery.pul.dynamics import DynamicsLog, dynamics_figure

    log = DynamicsLog(tmp_path / "dyn.csv", classes=2, start_step=0)
    for step in range(2):
        log.write(step, 0, 1.0 - 0.1 * step, 0.01 * step, 1.0, 1e-3, [3, 1], 0.1, 1.0)
    log.close()
    fig = dynamics_figure(read_dynamics(tmp_path / "dyn.csv"))
    fig.canvas.draw()
    ticks = fig.axes[-1].get_xticks()
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    loss_axes = fig.axes[0]
    legend = loss_axes.get_legend().get_window_extent()
    assert legend.x0 >= loss_axes.get_window_extent().x1  # beside the panel, not over the cross-entropy line
