"""`eval fetch voc07|voc12|coco20k`: download the official archives, verify them, unpack them into
the layout `eval run` reads; and `eval fetch-coco20k`: LOST's COCO20k list alone.

Every file is checked against a pinned checksum before it is unpacked or moved
(:func:`discovery.download.download`): the VOC archives' MD5s come from torchvision's own table
(``torchvision.datasets.voc.DATASET_YEAR_DICT``); COCO publishes no checksum, so the train2014 and
annotation archives carry the MD5s that third-party downloaders pin (see ``COCO_ARCHIVES``);
LOST's list has its sha256 pinned in :mod:`eval.datasets`.

Archives are unpacked into ``ROOT/.fetch-<name>.partial/`` and moved into place only when
complete, so `eval run` never sees a half-unpacked tree.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from discovery.download import Checksum, DownloadError, download, offline
from discovery.files import fsync_folder

from .archives import extract
from .datasets import (
    COCO20K_LIST_NAME,
    COCO20K_LIST_SHA256,
    COCO20K_LIST_URL,
    DatasetError,
    find_coco_folder,
    find_voc_folder,
)

#: environment variable naming a mirror: a URL prefix that serves every file under its file name
MIRROR_ENV = "DISCOVERY_DATA_MIRROR"

VOC_YEARS = {"voc07": "2007", "voc12": "2012"}  # keys of torchvision's table: the trainval archives

#: COCO 2014 (filename, URL, MD5). cocodataset.org publishes no checksum; these MD5s are the ones
#: pinned by PaddleDetection (dataset/coco/download_coco.py), pystiche_papers, LAVIS and MLPerf's
#: COCO download check, and equal the ETags of the images.cocodataset.org S3 objects.
COCO_ARCHIVES = (
    ("train2014.zip", "http://images.cocodataset.org/zips/train2014.zip", "0da8c0bd3d6becc4dcb32757491aca88"),
    ("annotations_trainval2014.zip", "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
     "0a379cfc70b0e71301e0f377548639bd"),
)


@dataclass(frozen=True)
class Download:
    """One published file of a dataset.

    Attributes:
        filename: its name on the server (and on a mirror) and in the archives folder.
        url: the official address.
        checksum: the digest it must have before it is unpacked or moved.
        member: for an archive, the folder inside it that is moved into place (``/``-separated);
            ``None``: the file itself is moved into place.
        place: where it goes inside the dataset folder (``""``: it is the dataset folder).
    """

    filename: str
    url: str
    checksum: Checksum
    member: str | None
    place: str


@dataclass(frozen=True)
class Fetched:
    """What :func:`fetch_dataset` did: ``folder`` is the dataset folder, ``downloaded`` the file
    names fetched and verified this time (empty when everything was already present)."""

    name: str
    folder: Path
    downloaded: tuple[str, ...]


def dataset_folder(name: str) -> str:
    """Where a dataset goes under ROOT (``/``-separated)."""
    return f"VOCdevkit/VOC{VOC_YEARS[name]}" if name in VOC_YEARS else "coco"


def downloads(name: str, voc_table: Mapping[str, Mapping[str, str]] | None = None) -> tuple[Download, ...]:
    """The files of ``name``, in the order they are moved into place (the last one completes the
    tree). ``voc_table`` replaces torchvision's ``DATASET_YEAR_DICT`` (same keys and fields)."""
    if name in VOC_YEARS:
        if voc_table is None:
            from torchvision.datasets.voc import DATASET_YEAR_DICT as voc_table
        entry = voc_table[VOC_YEARS[name]]
        member = Path(entry["base_dir"]).as_posix()
        return (Download(entry["filename"], entry["url"], Checksum("md5", entry["md5"]), member, ""),)
    if name != "coco20k":
        raise DatasetError(f"unknown dataset {name!r}; choose one of: voc07, voc12, coco20k")
    (images, images_url, images_md5), (ann, ann_url, ann_md5) = COCO_ARCHIVES
    return (
        Download(images, images_url, Checksum("md5", images_md5), "train2014", "train2014"),
        Download(COCO20K_LIST_NAME, COCO20K_LIST_URL, Checksum("sha256", COCO20K_LIST_SHA256), None, COCO20K_LIST_NAME),
        Download(ann, ann_url, Checksum("md5", ann_md5), "annotations", "annotations"),
    )


def with_mirror(items: Sequence[Download], mirror: str) -> tuple[Download, ...]:
    """The same files fetched from ``mirror/<filename>``."""
    base = mirror.rstrip("/")
    return tuple(replace(item, url=f"{base}/{item.filename}") for item in items)


def _tree_ok(name: str, root: Path) -> Path | None:
    """The dataset folder `eval run` would read under ``root`` (list file aside), or ``None``."""
    try:
        return find_voc_folder(root, VOC_YEARS[name]) if name in VOC_YEARS else find_coco_folder(root)[0]
    except DatasetError:
        return None


def fetch_dataset(
    name: str,
    root: str | Path,
    *,
    mirror: str | None = None,
    items: Sequence[Download] | None = None,
    archives_dir: str | Path | None = None,
    keep_archives: bool = False,
    progress: bool = False,
    timeout: float | None = None,
) -> Fetched:
    """Download, verify and unpack dataset ``name`` into ``root``.

    Args:
        name: ``voc07``, ``voc12`` or ``coco20k``.
        root: the data folder (created); VOC lands in ``ROOT/VOCdevkit/VOC<year>/``, COCO in
            ``ROOT/coco/{train2014/, annotations/, coco_20k_filenames.txt}``.
        mirror: fetch every file from ``MIRROR/<filename>`` instead of its official URL.
        items: the files to fetch (default :func:`downloads`); tests pass their own checksums.
        archives_dir: where archives are downloaded (default ``ROOT/archives``); a broken
            download resumes from its ``.part`` file there.
        keep_archives: keep the verified archives after unpacking (default: delete them). A
            verified file already in ``archives_dir`` is used without any download.
        progress: progress bars on stderr.
        timeout: seconds without receiving any of a file before its download is given up
            (``None``: :func:`discovery.download.download_timeout`, 30 s by default).

    Raises:
        DownloadError: offline, network failure or a checksum mismatch.
        DatasetError: an archive is unreadable or unsafe, or a partial tree that this function
            did not make is in the way.
    """
    root = Path(root).expanduser()
    items = tuple(items if items is not None else downloads(name))
    if mirror:
        items = with_mirror(items, mirror)
    existing = _tree_ok(name, root)
    if existing is not None and (name in VOC_YEARS or (existing / COCO20K_LIST_NAME).is_file()):
        return Fetched(name, existing, ())
    folder = existing or root / dataset_folder(name)
    todo = [item for item in items if not (folder / item.place).exists()]
    if existing is None and folder.exists():
        in_the_way = [str(folder / item.place) for item in items if item.member and (folder / item.place).exists()]
        if in_the_way:
            raise DatasetError(
                f"{', '.join(in_the_way)} already exist(s) but {folder} is not a complete {name} tree; "
                "move it away and run again"
            )
    archives = Path(archives_dir).expanduser() if archives_dir else root / "archives"
    for item in todo:
        try:
            download(item.url, archives / item.filename, item.checksum, timeout=timeout, progress=progress)
        except DownloadError as err:
            skip = "" if offline() else "; DISCOVERY_OFFLINE=1 skips downloads"
            raise DownloadError(
                f"{err}; put {item.filename} in {archives} yourself (its {item.checksum.algorithm} is checked before use{skip})",
                err.reason, err.kept,
            ) from None
    stage = root / f".fetch-{name}.partial"
    shutil.rmtree(stage, ignore_errors=True)  # left by a killed run
    try:
        tree = stage / "tree"
        for item in todo:
            source = archives / item.filename
            if item.member is not None:
                unpacked = stage / item.filename
                extract(source, unpacked, progress)
                source = unpacked / item.member
                if not source.is_dir():
                    raise DatasetError(f"{archives / item.filename} holds no folder {item.member}/; refused")
            target = tree / item.place if item.place else tree
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        _move_into_place(tree, folder, [item.place for item in todo])
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if not keep_archives:
        for item in todo:
            (archives / item.filename).unlink(missing_ok=True)
        if archives.is_dir() and not any(archives.iterdir()):
            archives.rmdir()
    return Fetched(name, folder.resolve(), tuple(item.filename for item in todo))


def _move_into_place(tree: Path, folder: Path, places: list[str]) -> None:
    """One rename when ``folder`` is new; else each part in turn, the last completing the tree."""
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tree, folder)
    else:
        for place in places:
            os.rename(tree / place, folder / place)
    fsync_folder(folder.parent)
    fsync_folder(folder)


def fetch_coco20k_list(dest: str | Path, url: str = COCO20K_LIST_URL, timeout: float | None = None) -> Path:
    """Download the list to ``dest`` (a file, or a folder to hold ``coco_20k_filenames.txt``) and
    verify it; an existing verified file is kept. ``timeout``: see ``fetch_dataset``. Raises
    :class:`DatasetError` (one line)."""
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / COCO20K_LIST_NAME
    manual = f"download {url} yourself and pass it with --image-list FILE (sha256 {COCO20K_LIST_SHA256})"
    checksum = Checksum("sha256", COCO20K_LIST_SHA256)
    if offline() and not dest.is_file():
        raise DatasetError(f"downloads are off (DISCOVERY_OFFLINE); {manual}")
    try:
        return download(url, dest, checksum, timeout=timeout)
    except DownloadError as err:
        raise DatasetError(f"{err}; {manual}") from None
