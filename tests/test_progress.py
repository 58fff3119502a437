"""Progress in a log file: plain lines every DISCOVERY_PROGRESS_INTERVAL seconds instead of a bar's
carriage returns (``pul train``, ``cad train`` through the shared loop, ``eval run``), and the
trainers' one-line time-left estimate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from discovery.eval.synth import make_synthetic
from discovery.progress import INTERVAL_ENV, Progress, duration, estimate_line

REPO = Path(__file__).resolve().parent.parent


def test_plain_lines_at_the_interval_and_at_the_end(monkeypatch, capsys):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    said = []
    with Progress("pul train", "step", 5, show=True, say=said.append) as bar:
        for _ in range(5):
            bar.update(1, {"ce": "1.1"})
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) == 5  # a line per update at interval 0; the end adds no duplicate
    assert lines[0].startswith("pul train: 1/5 (20%) [") and lines[-1].startswith("pul train: 5/5 (100%)")
    assert all("s/step" in line or "step/s" in line for line in lines) and "ce=1.1" in lines[-1]
    assert len(said) == 1 and said[0].startswith("pul train: ~") and "s/step (5 steps)" in said[0]

    with Progress("eval", "img", 4, show=False, say=said.append) as bar:
        for _ in range(4):
            bar.update(1)
    assert capsys.readouterr().err == "" and len(said) == 2  # no lines without show; the estimate still comes


def test_one_line_at_the_end_when_the_interval_is_long(monkeypatch, capsys):
    monkeypatch.setenv(INTERVAL_ENV, "3600")
    with Progress("eval", "img", 4, show=True) as bar:
        bar.update(2)
        bar.update(2)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("eval: 4/4 (100%)")


def test_estimate_and_duration_text():
    assert [duration(s) for s in (4.4, 59, 61, 3599, 4980)] == ["4 s", "59 s", "1 min", "1 h 0 min", "1 h 23 min"]
    assert estimate_line("cad train", "iteration", 5.6, 9997, 10000, 10000) == \
        "cad train: ~15 h 33 min left at 5.6 s/iteration (10000 iterations)"
    assert estimate_line("cad train", "iteration", 0.02, 500, 10000, 600).endswith(
        "~10 s left at 0.020 s/iteration (10000 iterations, stopping after 600)")


def test_bad_interval_is_one_line(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match=f"{INTERVAL_ENV} must be a number of seconds"):
        Progress("x", "step", 1)


def _stderr_of(*args: str) -> str:
    env = {**os.environ, INTERVAL_ENV: "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_trainer_and_eval_run_print_plain_lines_into_a_pipe(tmp_path):
    made = make_synthetic(tmp_path / "data", n=4, seed=0)
    images = made.out / "VOCdevkit" / "VOC2007" / "JPEGImages"
    out = tmp_path / "pul.safetensors"
    err = _stderr_of("discovery", "pul", "train", "--backbone", "random", "--images", str(images), "--out", str(out),
                     "--workers", "0", "--input-size", "32", "--batch-size", "1", "--lr", "0.001", "--epochs", "1")
    assert "\r" not in err
    lines = err.splitlines()
    steps = [line for line in lines if line.startswith("pul train: ") and "%)" in line]
    assert [line.split()[2] for line in steps] == ["1/4", "2/4", "3/4", "4/4"]
    estimate = [line for line in lines if " left at " in line]
    assert len(estimate) == 1 and estimate[0].startswith("pul train: ~") and estimate[0].endswith("s/step (4 steps)")

    err = _stderr_of("discovery.eval", "run", "--dataset", "voc07", "--root", str(made.out), "--backbone", "random",
                     "--out", str(tmp_path / "run"), "--workers", "0")
    assert "\r" not in err
    assert [line.split()[2] for line in err.splitlines() if line.startswith("voc07 lost: ")] == ["1/4", "2/4", "3/4", "4/4"]
