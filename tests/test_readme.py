"""Every example in README.md, read from the README's own text, runs as written on a fresh offline
machine: no weights, no network (``DISCOVERY_OFFLINE=1``), an empty weights folder, in a fresh
folder, in README order (later examples use what earlier ones made).

An example whose comment says it ``needs`` something this machine cannot have (a network, the
datasets, real weights, a GPU, a cluster) or ``takes minutes`` is parsed by the real command-line
parser instead, so its spelling and values are still checked. ``make`` and ``pip`` lines are the
README's setup commands: CI runs them (``.ci/run``).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import build_parser as bench_parser
from discovery import options
from discovery.app.main import build_parser as app_parser
from discovery.cli import build_parser as discovery_parser
from discovery.eval.cli import build_parser as eval_parser
from discovery.eval.reproduce import add_arguments as reproduce_arguments

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DRY = re.compile(r"\bneeds\b|\btakes minutes\b")


def _comment(line: str) -> tuple[str, str]:
    """``line`` split at its first ``#`` outside quotes: (command, comment)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip(), line[i + 1:].strip()
    return line.strip(), ""


def examples() -> list[tuple[int, str, str]]:
    """``(line number, command, comment)`` of every command in README's bash blocks."""
    found, block, pending, start = [], False, "", 0
    for number, line in enumerate((ROOT / "README.md").read_text().splitlines(), 1):
        if line.startswith("```"):
            block = line.strip() == "```bash"
            continue
        if not block:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command, comment = _comment(pending + line)
        pending = ""
        if command:
            found.append((start, command, comment))
    return found


def _parse(argv: list[str]) -> None:
    """Parse a command line with our real parser (no execution); argparse's error exits fail the test."""
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # environment assignments
        argv.pop(0)
    if argv[0] == "torchrun":
        argv = argv[argv.index("-m"):]
        argv = ["python", *argv]
    if argv[0] == "python":
        assert argv[1] == "-m", argv
        parsers = {"eval": eval_parser, "app": app_parser, "bench": bench_parser, "discovery": discovery_parser}
        parsers[argv[2]]().parse_args(argv[3:])
        return
    assert argv[0] == "discovery", argv
    rest = argv[1:]
    if rest[0] == "eval":
        eval_parser("discovery eval").parse_args(rest[1:])
    elif rest[0] == "app":
        app_parser("discovery app").parse_args(rest[1:])
    elif rest[0] == "reproduce":
        _reproduce(rest[1:], "discovery reproduce")
    else:
        discovery_parser().parse_args(rest)


def _reproduce(argv: list[str], prog: str) -> None:
    parser = options.Parser(prog=prog)
    reproduce_arguments(parser)
    parser.parse_args(argv)


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    extra = {}
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
        key, _, value = argv.pop(0).partition("=")
        extra[key] = value if key != "PYTHONPATH" else os.pathsep.join([str(ROOT / value), env["PYTHONPATH"]])
    program = {"python": sys.executable, "discovery": str(BIN / "discovery")}[argv[0]]
    return subprocess.run([program, *argv[1:]], cwd=cwd, env={**env, **extra}, capture_output=True, text=True, timeout=600)


def test_the_readme_has_examples_of_every_kind():
    commands = [c for _, c, _ in examples()]
    assert len(commands) > 30
    assert any(c.startswith("discovery explain --example chelsea") for c in commands)
    assert any(DRY.search(comment) for _, _, comment in examples())


def test_every_readme_example_runs_as_written_offline(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),  # `python -m eval` / `python -m app` / `python -m bench`: run in a checkout
        "DISCOVERY_OFFLINE": "1",
        "DISCOVERY_WEIGHTS_DIR": str(tmp_path / "weights"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "HOME": str(home),
        "MPLBACKEND": "Agg",
    }
    work = tmp_path / "work"
    work.mkdir()
    ran = parsed = 0
    for number, command, comment in examples():
        argv = shlex.split(command)
        if argv[0] in ("make", "pip"):
            continue
        if DRY.search(comment):
            try:
                _parse(list(argv))
            except SystemExit as stop:
                pytest.fail(f"README.md:{number}: `{command}` does not parse (exit {stop.code})")
            parsed += 1
            continue
        done = _run(list(argv), work, env)
        assert done.returncode == 0, f"README.md:{number}: `{command}` exited {done.returncode}: {done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr, f"README.md:{number}: {done.stderr[-2000:]}"
        ran += 1
    assert ran >= 15 and parsed >= 10, (ran, parsed)
