"""Unpack a downloaded dataset archive (tar, optionally compressed, or zip) without letting it
write outside the folder it is unpacked into.

Tar members go through tarfile's ``data`` filter (no absolute paths, no ``..``, no links that
leave the folder, no devices); zip member names are checked before anything is written. The
caller unpacks into a staging folder and moves the result into place only when this returns.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from .datasets import DatasetError


def _unsafe_zip_name(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or (bool(path.parts) and ":" in path.parts[0])


def extract(archive: Path, dest: Path, progress: bool = False) -> None:
    """Unpack ``archive`` into the folder ``dest`` (created).

    Raises:
        DatasetError: the archive is unreadable, or a member would land outside ``dest`` (then
            whatever was written stays in ``dest``, which the caller throws away).
    """
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, dest, progress)
        return
    try:
        with tarfile.open(archive) as tar, tqdm(unit=" files", disable=not progress, desc=f"unpack {archive.name}") as bar:
            for member in tar:
                tar.extract(member, dest, filter="data")
                bar.update()
    except tarfile.FilterError as err:
        raise DatasetError(f"{archive}: {err}; refused (an archive may not write outside its folder)") from None
    except (tarfile.TarError, EOFError) as err:
        raise DatasetError(f"{archive}: not a readable tar or zip archive ({err})") from None


def _extract_zip(archive: Path, dest: Path, progress: bool) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            bad = next((m.filename for m in members if _unsafe_zip_name(m.filename)), None)
            if bad is not None:
                raise DatasetError(f"{archive}: member {bad!r} would be written outside the folder; refused")
            for member in tqdm(members, unit=" files", disable=not progress, desc=f"unpack {archive.name}"):
                zf.extract(member, dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as err:
        raise DatasetError(f"{archive}: not a readable zip archive ({err})") from None
