"""Behind a firewall: a proxy or server on 127.0.0.1 that accepts connections and never answers.

The real CLI runs in a subprocess with a short time-out; it must say what it tries first, then
fail within a bound with one short ``error:`` line. The weights commands reach the silent server
as their HTTPS proxy (``https_proxy``, as on an HPC compute node), ``eval fetch`` as its mirror.
Nothing leaves the machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from discovery.download import TIMEOUT_ENV, DownloadError, download

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 2.0
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass
class Silent:
    address: str  # host:port
    accepted: list[socket.socket]


@pytest.fixture
def silent() -> Iterator[Silent]:
    """A TCP server that accepts every connection, holds it open and never sends a byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    server = Silent(f"127.0.0.1:{listener.getsockname()[1]}", [])
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                server.accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server
    stop.set()
    thread.join()
    listener.close()
    for conn in server.accepted:
        conn.close()


def _env(proxy: str | None, **extra: str) -> dict[str, str]:
    """This environment with downloads on, the proxy variables replaced, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS and k not in ("DISCOVERY_OFFLINE", TIMEOUT_ENV)}
    if proxy:
        for name in ("http_proxy", "https_proxy"):
            env[name] = env[name.upper()] = f"http://{proxy}"
    return {**env, **extra}


@dataclass
class Run:
    returncode: int
    lines: list[tuple[float, str]]  # (time.monotonic() when read, stderr line)

    def first(self, prefix: str) -> tuple[float, str]:
        return next((t, line) for t, line in self.lines if line.startswith(prefix))


def _cli(args: list[str], env: dict[str, str]) -> Run:
    """``python -m discovery ARGS``, its stderr lines time-stamped as they arrive."""
    proc = subprocess.Popen([sys.executable, "-m", "discovery", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killer = threading.Timer(120, proc.kill)  # a hang fails the test instead of stalling the suite
    killer.start()
    try:
        lines = [(time.monotonic(), line) for line in proc.stderr]
        proc.wait()
    finally:
        killer.cancel()
    return Run(proc.returncode, lines)


def _check_failed_in_time(run: Run, silent: Silent) -> str:
    """The run said what it fetches, then gave up within the bound in one short line; returns it."""
    assert run.returncode == 2, run.lines
    errors = [line for _, line in run.lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in "".join(line for _, line in run.lines), run.lines
    started, fetching = run.first("fetching ")
    assert f"time-out {TIMEOUT:g} s" in fetching and "DISCOVERY_OFFLINE=1" in fetching
    waited = run.first("error:")[0] - started  # what the user waits for; the exit follows at once
    assert 0.9 * TIMEOUT <= waited < 3 * TIMEOUT, waited  # it was the time-out that ended it
    assert silent.accepted  # the silent server was reached, nothing else
    error = errors[0].rstrip("\n")
    assert len(error) < 300, (len(error), error)
    assert "DISCOVERY_OFFLINE=1" in error and f"nothing received for {TIMEOUT:g} s" in error
    assert ".part" not in error  # no bytes came: nothing is kept, nothing to resume
    return error


def test_locate_behind_a_silent_proxy_fails_in_time_with_one_line(tmp_path, silent, textured_image):
    img = tmp_path / "photo.png"
    Image.fromarray(textured_image).save(img)
    folder = tmp_path / "torch" / "hub" / "checkpoints"  # as installed: the weights folder is the hub folder
    env = _env(silent.address, TORCH_HOME=str(tmp_path / "torch"), DISCOVERY_WEIGHTS_DIR=str(folder),
               **{TIMEOUT_ENV: f"{TIMEOUT:g}"})
    run = _cli(["locate", str(img)], env)
    error = _check_failed_in_time(run, silent)
    assert "resnet50-0676ba61.pth (98 MB) from https://download.pytorch.org/" in run.first("fetching ")[1]
    assert "resnet50-0676ba61.pth" in error and "https://download.pytorch.org/models/resnet50-0676ba61.pth" in error
    assert error.count(str(folder)) == 1 and "weights fetch" not in error and "run again" not in error
    assert not list(folder.glob("*.part"))


def test_weights_fetch_timeout_option_wins_over_the_environment(tmp_path, silent):
    env = _env(silent.address, **{TIMEOUT_ENV: "600"})
    run = _cli(["weights", "--weights-dir", str(tmp_path), "fetch", "imagenet", "--timeout", f"{TIMEOUT:g}"], env)
    error = _check_failed_in_time(run, silent)
    assert str(tmp_path) in error


def test_eval_fetch_from_a_silent_mirror_fails_in_time_with_one_line(tmp_path, silent):
    run = _cli(["eval", "fetch", "voc07", "--root", str(tmp_path), "--mirror", f"http://{silent.address}",
                "--timeout", f"{TIMEOUT:g}", "--no-progress"], _env(None))
    error = _check_failed_in_time(run, silent)
    assert "VOCtrainval_06-Nov-2007.tar" in error
    assert not list(tmp_path.rglob("*.part")) and not (tmp_path / "VOCdevkit").exists()


def test_retries_stay_within_the_timeout(tmp_path, silent, monkeypatch):
    monkeypatch.delenv("DISCOVERY_OFFLINE")
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"nothing received for 1 s\)$"):
        download(f"http://{silent.address}/x.bin", tmp_path / "x.bin", timeout=1.0, retries=3)
    assert 0.9 < time.monotonic() - start < 2.0 and len(silent.accepted) == 1  # the one try used the time up
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]  # nothing listens once it is closed: every try is refused at once
    start = time.monotonic()
    with pytest.raises(DownloadError, match="refused"):
        download(f"http://127.0.0.1:{port}/x.bin", tmp_path / "x.bin", timeout=1.5, retries=3)
    assert time.monotonic() - start < 1.5  # 0 s and 1 s pauses fit in 1.5 s, the 2 s one does not


def test_a_failed_name_lookup_is_not_retried(tmp_path, monkeypatch):
    monkeypatch.delenv("DISCOVERY_OFFLINE")
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    lookups = []

    def no_dns(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(DownloadError, match=r"failed \(\[Errno -2\] Name or service not known\)$") as info:
        download("https://weights.example.org/x.bin", tmp_path / "x.bin", retries=3)
    assert lookups == ["weights.example.org"] and info.value.kept is None


def test_a_bad_timeout_setting_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("DISCOVERY_OFFLINE")
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(DownloadError, match=f"^{TIMEOUT_ENV} must be a number of seconds above 0, not 'soon'$"):
        download("http://127.0.0.1:9/x.bin", tmp_path / "x.bin")
