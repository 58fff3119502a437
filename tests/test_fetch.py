"""Downloads and dataset fetching against an HTTP server on 127.0.0.1 that the tests start.

The server serves small archives made here from `eval synth` data under the real archives' names
(with ``Range`` support that can be switched off, responses that can be cut short or stalled,
and a log of every request). Nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from torchvision.datasets.voc import DATASET_YEAR_DICT

import discovery.weights as W
from discovery.download import Checksum, DownloadError, download
from discovery.eval.archives import extract
from discovery.eval.cli import main
from discovery.eval.datasets import DatasetError, open_dataset
from discovery.eval.fetch import downloads, fetch_coco20k_list, fetch_dataset
from discovery.eval.synth import make_synthetic

VOC07 = DATASET_YEAR_DICT["2007"]["filename"]
VOC12 = DATASET_YEAR_DICT["2012"]["filename"]


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar(folder: Path, arcname: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname=arcname)
    return buf.getvalue()


def _zip(folder: Path, arcname: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, f"{arcname}/{path.relative_to(folder).as_posix()}")
    return buf.getvalue()


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, bytes]:
    """File name → bytes, as the official sites would serve them (tiny synthetic contents)."""
    made = make_synthetic(tmp_path_factory.mktemp("synth"), n=3)
    devkit, coco = made.out / "VOCdevkit", made.coco_root
    return {
        VOC07: _tar(devkit / "VOC2007", "VOCdevkit/VOC2007"),
        VOC12: _tar(devkit / "VOC2012", "VOCdevkit/VOC2012"),
        "train2014.zip": _zip(coco / "train2014", "train2014"),
        "annotations_trainval2014.zip": _zip(coco / "annotations", "annotations"),
        "coco_20k_filenames.txt": (coco / "coco_20k_filenames.txt").read_bytes(),
    }


@dataclass
class ServerState:
    files: dict[str, bytes]
    ranges: bool = True  # False: ignore Range headers (answer 200 with the whole file)
    cut: dict[str, int] = field(default_factory=dict)  # name → bytes sent before closing, once
    stall: float = 0.0  # seconds to wait before answering
    trickle: float = 0.0  # seconds to wait before each 1000-byte piece of a body
    log: list[tuple[str, str | None]] = field(default_factory=list)  # (name, Range header)

    def gets(self, name: str) -> list[str | None]:
        return [rng for logged, rng in self.log if logged == name]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        state: ServerState = self.server.state
        name = self.path.lstrip("/")
        state.log.append((name, self.headers.get("Range")))
        time.sleep(state.stall)
        try:
            self._answer(state, name)
        except ConnectionError:  # the client gave up (a timeout test)
            pass

    def _answer(self, state: ServerState, name: str) -> None:
        data = state.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range") and state.ranges:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        body = body[: state.cut.pop(name, len(body))]
        piece = 1000 if state.trickle else max(len(body), 1)
        for start in range(0, len(body), piece):
            time.sleep(state.trickle)
            self.wfile.write(body[start:start + piece])
            self.wfile.flush()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(published, monkeypatch):
    """``(base URL, state)`` of a loopback server; downloads are switched on for the test."""
    monkeypatch.delenv("DISCOVERY_OFFLINE", raising=False)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState(dict(published))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.state
    httpd.shutdown()
    httpd.server_close()


def _items(name: str, files: dict[str, bytes]):
    """The real file list of ``name`` (torchvision's VOC table, our COCO table) with the test
    archives' checksums: the injection point is the table, torchvision is not touched."""
    if name.startswith("voc"):
        year = {"voc07": "2007", "voc12": "2012"}[name]
        entry = DATASET_YEAR_DICT[year]
        return downloads(name, voc_table={year: {**entry, "md5": _md5(files[entry["filename"]])}})
    return tuple(
        replace(item, checksum=Checksum(item.checksum.algorithm, hashlib.new(item.checksum.algorithm, files[item.filename]).hexdigest()))
        for item in downloads(name)
    )


def _one_error_line(capsys) -> str:
    """The one ``error:`` line on stderr, after nothing but ``fetching ...`` lines."""
    *before, err = capsys.readouterr().err.splitlines(keepends=True)
    assert err.startswith("error: ") and err.endswith("\n"), err
    assert all(line.startswith("fetching ") for line in before), before
    return err


def test_the_tables_name_the_trainval_archives():
    (voc07,) = downloads("voc07")
    assert voc07.filename == "VOCtrainval_06-Nov-2007.tar" and voc07.member == "VOCdevkit/VOC2007"
    assert voc07.checksum == Checksum("md5", DATASET_YEAR_DICT["2007"]["md5"])
    assert downloads("voc12")[0].filename == "VOCtrainval_11-May-2012.tar"
    assert [d.filename for d in downloads("coco20k")] == ["train2014.zip", "coco_20k_filenames.txt", "annotations_trainval2014.zip"]


def test_full_fetch_gives_trees_that_eval_opens(server, tmp_path, published):
    url, state = server
    root = tmp_path / "data"
    for name in ("voc07", "voc12", "coco20k"):
        done = fetch_dataset(name, root, mirror=url, items=_items(name, published))
        assert done.downloaded
    assert len(open_dataset("voc07", root)) == 3 and len(open_dataset("voc12", root)) == 3
    assert len(open_dataset("coco20k", root)) == 2  # synth's list leaves the last image out
    assert open_dataset("voc07", root).root == (root / "VOCdevkit" / "VOC2007").resolve()
    assert sorted(p.name for p in root.iterdir()) == ["VOCdevkit", "coco"]  # archives and staging are gone
    requests = len(state.log)
    again = fetch_dataset("coco20k", root, mirror=url, items=_items("coco20k", published))
    assert again.downloaded == () and len(state.log) == requests


def test_truncated_download_resumes_with_a_range_request(server, tmp_path, published):
    url, state = server
    data, dest = published[VOC07], tmp_path / VOC07
    state.cut[VOC07] = 1000
    with pytest.raises(DownloadError, match="run again to resume") as info:
        download(f"{url}/{VOC07}", dest, Checksum("md5", _md5(data)), retries=0)
    assert "\n" not in str(info.value)
    part = tmp_path / f"{VOC07}.part"
    assert part.stat().st_size == 1000 and not dest.exists()
    download(f"{url}/{VOC07}", dest, Checksum("md5", _md5(data)), retries=0)
    assert state.gets(VOC07) == [None, "bytes=1000-"]
    assert dest.read_bytes() == data and not part.exists()


def test_fetch_resumes_a_cut_archive_within_the_call(server, tmp_path, published):
    url, state = server
    state.cut[VOC07] = len(published[VOC07]) // 2
    fetch_dataset("voc07", tmp_path, mirror=url, items=_items("voc07", published))
    assert state.gets(VOC07) == [None, f"bytes={len(published[VOC07]) // 2}-"]
    assert len(open_dataset("voc07", tmp_path)) == 3


def test_server_that_ignores_range_restarts_from_zero(server, tmp_path, published):
    url, state = server
    data, dest = published[VOC07], tmp_path / VOC07
    state.ranges = False
    (tmp_path / f"{VOC07}.part").write_bytes(b"x" * 500)  # even wrong bytes: a 200 rewrites them
    download(f"{url}/{VOC07}", dest, Checksum("md5", _md5(data)))
    assert state.gets(VOC07) == ["bytes=500-"] and dest.read_bytes() == data


def test_416_on_a_whole_part_and_a_bad_whole_part(server, tmp_path, published):
    url, state = server
    data, dest = published[VOC07], tmp_path / VOC07
    part = tmp_path / f"{VOC07}.part"
    part.write_bytes(data)
    download(f"{url}/{VOC07}", dest, Checksum("md5", _md5(data)))
    assert state.gets(VOC07) == [f"bytes={len(data)}-"] and dest.read_bytes() == data
    dest.unlink()
    part.write_bytes(b"\0" * len(data))  # whole length, wrong bytes: refused, then fetched afresh once
    download(f"{url}/{VOC07}", dest, Checksum("md5", _md5(data)))
    assert state.gets(VOC07)[1:] == [f"bytes={len(data)}-", None] and dest.read_bytes() == data


def test_wrong_checksum_is_refused_and_nothing_is_unpacked(server, tmp_path, capsys):
    url, state = server  # the CLI uses torchvision's real MD5: the test archive cannot match it
    assert main(["fetch", "voc07", "--root", str(tmp_path), "--mirror", url, "--no-progress"]) == 2
    err = _one_error_line(capsys)
    assert "md5" in err and DATASET_YEAR_DICT["2007"]["md5"] in err and "refused" in err
    assert not (tmp_path / "VOCdevkit").exists()
    assert not list((tmp_path / "archives").iterdir())  # no archive and no .part kept
    assert not list(tmp_path.glob(".fetch-*"))


def test_env_mirror_and_cli_success(server, tmp_path, published, monkeypatch, capsys):
    url, state = server
    monkeypatch.setenv("DISCOVERY_DATA_MIRROR", url)
    monkeypatch.setattr("discovery.eval.fetch.downloads", lambda name: _items(name, published))
    assert main(["fetch", "voc12", "--root", str(tmp_path), "--no-progress", "--keep-archives"]) == 0
    assert "voc12: " in capsys.readouterr().out and state.gets(VOC12) == [None]
    assert (tmp_path / "archives" / VOC12).read_bytes() == published[VOC12]
    assert main(["fetch", "voc12", "--root", str(tmp_path), "--no-progress"]) == 0
    assert "already present" in capsys.readouterr().out


def test_offline_refuses_with_one_line(server, tmp_path, monkeypatch, capsys):
    url, state = server
    monkeypatch.setenv("DISCOVERY_OFFLINE", "1")
    assert main(["fetch", "coco20k", "--root", str(tmp_path / "data"), "--mirror", url]) == 2
    err = _one_error_line(capsys)
    assert "downloads are off" in err and "train2014.zip" in err
    assert state.log == [] and not (tmp_path / "data").exists()
    with pytest.raises(DownloadError, match="downloads are off"):
        download(f"{url}/x", tmp_path / "x")


def test_verified_archives_put_by_hand_are_used_offline(server, tmp_path, published, monkeypatch):
    url, state = server
    monkeypatch.setenv("DISCOVERY_OFFLINE", "1")
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / VOC07).write_bytes(published[VOC07])
    fetch_dataset("voc07", tmp_path, items=_items("voc07", published))
    assert state.log == [] and len(open_dataset("voc07", tmp_path)) == 3


def test_path_traversal_is_refused(server, tmp_path, published):
    url, state = server
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("VOCdevkit/VOC2007/../../../evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    state.files[VOC07] = buf.getvalue()
    root = tmp_path / "root"
    with pytest.raises(DatasetError, match="refused") as err:
        fetch_dataset("voc07", root, mirror=url, items=_items("voc07", state.files))
    assert "\n" not in str(err.value)
    assert not list(tmp_path.rglob("evil.txt")) and not (root / "VOCdevkit").exists()
    assert not list(root.glob(".fetch-*"))
    for name in ("../evil.txt", "/abs/evil.txt"):
        archive = tmp_path / "bad.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr(name, b"evil")
        with pytest.raises(DatasetError, match="outside the folder; refused"):
            extract(archive, tmp_path / "out")
        assert not list(tmp_path.rglob("evil.txt"))


def test_killed_unpack_leaves_nothing_where_eval_reads(server, tmp_path, published, monkeypatch):
    url, state = server
    real_extract, calls = tarfile.TarFile.extract, []

    def dying_extract(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_extract(self, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extract", dying_extract)
    with pytest.raises(KeyboardInterrupt):
        fetch_dataset("voc07", tmp_path, mirror=url, items=_items("voc07", published))
    assert not (tmp_path / "VOCdevkit").exists() and not list(tmp_path.glob(".fetch-*"))
    with pytest.raises(DatasetError, match="no PASCAL VOC2007"):
        open_dataset("voc07", tmp_path)
    monkeypatch.setattr(tarfile.TarFile, "extract", real_extract)
    (tmp_path / ".fetch-voc07.partial" / "tree" / "JPEGImages").mkdir(parents=True)  # as a kill -9 leaves it
    fetch_dataset("voc07", tmp_path, mirror=url, items=_items("voc07", published))
    assert state.gets(VOC07) == [None]  # the verified archive was kept: no second download
    assert len(open_dataset("voc07", tmp_path)) == 3 and not list(tmp_path.glob(".fetch-*"))


def test_coco_folder_with_only_the_list_is_completed(server, tmp_path, published):
    url, state = server
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "coco_20k_filenames.txt").write_bytes(published["coco_20k_filenames.txt"])
    done = fetch_dataset("coco20k", tmp_path, mirror=url, items=_items("coco20k", published))
    assert done.downloaded == ("train2014.zip", "annotations_trainval2014.zip")
    assert state.gets("coco_20k_filenames.txt") == [] and len(open_dataset("coco20k", tmp_path)) == 2


def test_a_partial_tree_in_the_way_is_not_touched(server, tmp_path, published):
    url, state = server
    (tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(DatasetError, match="not a complete voc07 tree; move it away"):
        fetch_dataset("voc07", tmp_path, mirror=url, items=_items("voc07", published))
    assert state.log == [] and list((tmp_path / "VOCdevkit" / "VOC2007").iterdir()) == [tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages"]


def test_network_failures_are_one_line(server, tmp_path):
    url, state = server
    with pytest.raises(DownloadError, match=r"HTTP 404") as info:
        download(f"{url}/missing.tar", tmp_path / "m.tar")
    assert "\n" not in str(info.value) and not list(tmp_path.iterdir())
    state.stall = 1.0
    with pytest.raises(DownloadError, match=r"failed \(nothing received for 0.2 s\)$") as info:
        download(f"{url}/{VOC07}", tmp_path / VOC07, timeout=0.2, retries=0)
    assert info.value.kept is None and not (tmp_path / f"{VOC07}.part").exists()  # nothing to resume: not claimed
    with pytest.raises(DownloadError, match="failed"):
        download("http://127.0.0.1:9/x.tar", tmp_path / "x.tar", retries=0)  # port 9: nothing listens


def test_a_download_that_keeps_moving_may_outlast_the_timeout(server, tmp_path):
    url, state = server
    data = bytes(range(256)) * 40
    state.files["slow.bin"], state.trickle = data, 0.1  # 11 pieces of 1000 bytes: 1.1 s, twice the time-out and more
    start = time.monotonic()
    download(f"{url}/slow.bin", tmp_path / "slow.bin", Checksum("sha256", _sha256(data)), timeout=0.4, retries=0)
    assert time.monotonic() - start > 0.8 and (tmp_path / "slow.bin").read_bytes() == data


def test_coco20k_list_through_the_downloader(server, tmp_path, published):
    url, state = server
    with pytest.raises(DatasetError, match="does not match the expected 74637e9b.*refused.*--image-list"):
        fetch_coco20k_list(tmp_path, url=f"{url}/coco_20k_filenames.txt")
    assert not list(tmp_path.iterdir())


def test_weights_fetch_resumes_and_checks_the_hash_prefix(server, tmp_path, monkeypatch):
    url, state = server
    data = b"not really a checkpoint, " * 4000
    state.files["resnet50-test.pth"] = data
    state.cut["resnet50-test.pth"] = 30_000
    spec = replace(W.REGISTRY["imagenet"], url=f"{url}/resnet50-test.pth", filename="resnet50-test.pth",
                   sha256_prefix=_sha256(data)[:8])
    monkeypatch.setitem(W.REGISTRY, "imagenet", spec)
    path = W.fetch("imagenet", tmp_path, progress=False)
    assert path.read_bytes() == data and state.gets("resnet50-test.pth") == [None, "bytes=30000-"]
    bad = replace(spec, sha256_prefix="00000000", filename="other.pth")
    monkeypatch.setitem(W.REGISTRY, "imagenet", bad)
    with pytest.raises(W.WeightsError, match="sha256 .* does not match the expected 00000000; refused") as info:
        W.fetch("imagenet", tmp_path, progress=False)
    assert "\n" not in str(info.value) and "other.pth" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet50-test.pth"]
