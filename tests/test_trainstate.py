"""The trainers' shared pieces: atomic checkpoint files (mode, leftovers of a kill) and the gradient clipper."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from discovery.training import clip_gradients
from discovery.trainstate import remove_stale_temporaries, save_checkpoint, save_state, state_path


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_files_follow_the_umask_whatever_mode_the_writer_used(tmp_path):
    old = os.umask(0o027)
    try:
        save_checkpoint(tmp_path / "w.safetensors", {"w": torch.zeros(2)}, {"format": "x"})  # safetensors writes 0600
        save_state(tmp_path / "s.pt", {"step": 1})
    finally:
        os.umask(old)
    assert oct((tmp_path / "w.safetensors").stat().st_mode & 0o777) == oct(0o640)
    assert oct((tmp_path / "s.pt").stat().st_mode & 0o777) == oct(0o640)


def test_resume_removes_only_the_temporaries_of_dead_writers(tmp_path):
    out = tmp_path / "run.safetensors"
    dead = _dead_pid()
    stale = [tmp_path / f".run.safetensors.state.pt.tmp{dead}", tmp_path / f".run.safetensors.tmp{dead}"]
    kept = [
        tmp_path / f".run.safetensors.state.pt.tmp{os.getpid()}",  # a live writer
        tmp_path / f".other.safetensors.tmp{dead}",  # another output's
        tmp_path / ".run.safetensors.state.pt.tmpX",  # not our naming
        state_path(out),
    ]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(out)) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_clip_gradients_scales_to_the_norm_and_zero_is_off():
    net = nn.Linear(3, 2)
    for p in net.parameters():
        p.grad = torch.full_like(p, 2.0)
    norm = float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in net.parameters()]).double()))
    assert clip_gradients(net, 0) == pytest.approx(norm) and all((p.grad == 2).all() for p in net.parameters())
    assert clip_gradients(net, 1.0) == pytest.approx(norm)
    clipped = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in net.parameters()]).double())
    assert float(clipped) == pytest.approx(1.0)
    assert clip_gradients(nn.Linear(1, 1), 1.0) == 0.0  # no gradients yet


def test_a_state_file_makes_its_folder(tmp_path):
    """``--out weights/x.safetensors --stop-after N`` in a fresh checkout: the state's folder does not exist yet."""
    path = state_path(tmp_path / "weights" / "x.safetensors")
    save_state(path, {"step": 1})
    assert torch.load(path, weights_only=True) == {"step": 1}
