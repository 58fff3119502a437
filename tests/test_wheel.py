"""The package as a user installs it: build the wheel, install it into a fresh virtual environment
outside the checkout, and use it from another folder.

The fresh environment gets the wheel alone (``--no-deps --no-index``); torch and the other
dependencies are borrowed from the test's own environment through a path file, so nothing is
downloaded and the checkout is never on the path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("pyproject.toml", "README.md", "discovery", "eval", "app")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(venv, work folder, environment)`` with the wheel installed into ``venv``."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    for name in SHIPPED:  # a copy, so the build leaves nothing in the checkout
        target = src / name
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target)
    dist = base / "dist"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DISCOVERY_WEIGHTS_DIR", "VIRTUAL_ENV")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)], base, env)
    wheels = list(dist.glob("object_discovery-*.whl"))
    assert len(wheels) == 1, list(dist.iterdir())
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base, env)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheels[0])], base, env)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base, env).stdout.strip())
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = base / "work"
    work.mkdir()
    env.update(TORCH_HOME=str(base / "torch-home"), DISCOVERY_OFFLINE="1", PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}")
    return venv, work, env, site


def test_wheel_installs_one_top_level_package(installed):
    venv, work, env, site = installed
    records = list(site.glob("object_discovery-*.dist-info/RECORD"))
    assert len(records) == 1
    tops = set()
    for line in records[0].read_text().splitlines():
        path = line.split(",", 1)[0]
        if not path.startswith("..") and ".dist-info/" not in path:
            tops.add(path.split("/", 1)[0])
    assert tops == {"discovery"}
    for sub in ("eval", "app"):
        assert (site / "discovery" / sub / "__init__.py").is_file()
    for init in (ROOT / "discovery").rglob("__init__.py"):  # every subpackage is listed in pyproject.toml
        assert (site / init.relative_to(ROOT)).is_file(), init
    assert not (site / "bench").exists() and not (site / "tests").exists()
    proc = _run([str(venv / "bin" / "python"), "-c", "import discovery, discovery.eval.cli; print(discovery.__file__)"], work, env)
    assert proc.stdout.strip().startswith(str(site))


def test_installed_commands_run_from_another_folder(installed):
    venv, work, env, site = installed
    exe = str(venv / "bin" / "discovery")
    help_text = _run([exe, "--help"], work, env).stdout
    assert "eval" in help_text and "app" in help_text
    assert "usage: discovery eval" in _run([exe, "eval", "--help"], work, env).stdout
    assert "usage: discovery app" in _run([exe, "app", "--help"], work, env).stdout

    # Weights live in the user's torch cache, never in site-packages.
    where = _run([exe, "weights", "path", "imagenet"], work, env).stdout
    assert where.startswith(str(Path(env["TORCH_HOME"]) / "hub" / "checkpoints" / "resnet50-0676ba61.pth"))
    assert str(site) not in where

    demo = _run([exe, "demo"], work, env)
    record = json.loads(demo.stdout.strip().splitlines()[-1])
    assert Path(work / record["overlay"]).is_file() and "pipeline check" in demo.stderr

    _run([exe, "eval", "synth", "--out", "data", "--n", "4"], work, env)
    _run([exe, "eval", "run", "--dataset", "voc07", "--root", "data", "--backbone", "random", "--out", "run",
          "--no-progress"], work, env)
    summary = json.loads((work / "run" / "results.json").read_text())
    assert summary["total"] == 4
    scored = json.loads(_run([exe, "eval", "score", "--dataset", "voc07", "--root", "data", "--predictions",
                              "run/predictions.jsonl"], work, env).stdout)
    assert scored["corloc"] == summary["corloc"]
    assert not list(site.rglob("*.pth")) or all(p.name == "borrowed_dependencies.pth" for p in site.glob("*.pth"))
