"""Shared fixtures. No test downloads anything: downloads are switched off and every weights
location points into a temporary folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from discovery.backbones import load_backbone


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("DISCOVERY_OFFLINE", "1")
    monkeypatch.setenv("DISCOVERY_WEIGHTS_DIR", str(tmp_path_factory.mktemp("weights")))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def random_backbone():
    """A seeded random-init ResNet50 (stride 16, with classifier), loaded once per session.
    Frozen and in eval mode: do not modify it in a test (copy.deepcopy it first)."""
    return load_backbone("random", stride=16)


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory):
    """An untrained but valid detector checkpoint (seeded random ResNet50 trunk, small sizes),
    written the way `discovery cad train` writes one: enough for tests of the detector's users."""
    from discovery.detector import FORMAT, DetectorConfig, build_model, model_state
    from discovery.trainstate import save_checkpoint

    config = DetectorConfig(min_size=(64,), min_size_test=64, max_size=128, anchor_sizes=(16, 32, 64), roi_size=4,
                            pre_nms_test=100, proposals_test=10, freeze_at=5)
    base = load_backbone("random", stride=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(base.trunk, base.mean, base.std, config)
    path = tmp_path_factory.mktemp("detector") / "tiny.safetensors"
    save_checkpoint(path, model_state(model), {
        "format": FORMAT, "detector": config.to_json(),
        "base": {"name": "random", "sha256": base.info.sha256, "mean": list(base.mean), "std": list(base.std)},
    })
    return path


@pytest.fixture
def textured_image():
    """A 96x128 RGB uint8 image: noise background with a bright square object."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 80, size=(96, 128, 3), dtype=np.uint8)
    img[30:70, 40:90] = rng.integers(180, 255, size=(40, 50, 3), dtype=np.uint8)
    return img


def kill_at_first_state(args: list, state_file: Path, cwd: Path) -> None:
    """Run ``python -m discovery ARGS`` and SIGKILL it as soon as ``state_file`` appears (a trainer's
    first resumable state): the kill a resume test recovers from."""
    proc = subprocess.Popen([sys.executable, "-m", "discovery", *map(str, args)], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not state_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()


class LibraryClassifier(nn.Module):
    """Our backbone as the plain ``image -> logits`` model pytorch-grad-cam expects."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone.classify(self.backbone(x))
