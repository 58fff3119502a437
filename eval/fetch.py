"""`eval fetch-coco20k`: download LOST's 19,817-name COCO20k list and check its sha256."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from discovery.weights import offline, sha256_file

from .datasets import COCO20K_LIST_NAME, COCO20K_LIST_SHA256, COCO20K_LIST_URL, DatasetError


def fetch_coco20k_list(dest: str | Path, url: str = COCO20K_LIST_URL, timeout: float = 60.0) -> Path:
    """Download the list to ``dest`` (a file, or a folder to hold ``coco_20k_filenames.txt``) and
    verify it; an existing verified file is kept. Raises :class:`DatasetError` (one line)."""
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / COCO20K_LIST_NAME
    if dest.is_file() and sha256_file(dest) == COCO20K_LIST_SHA256:
        return dest
    manual = f"download {url} yourself and pass it with --image-list FILE (sha256 {COCO20K_LIST_SHA256})"
    if offline():
        raise DatasetError(f"downloads are off (DISCOVERY_OFFLINE); {manual}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as fh:
            fh.write(response.read())
    except (urllib.error.URLError, OSError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or str(err).splitlines()[0] or type(err).__name__
        raise DatasetError(f"download of {url} failed ({reason}); {manual}") from None
    digest = sha256_file(tmp)
    if digest != COCO20K_LIST_SHA256:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"{url} has sha256 {digest}, expected {COCO20K_LIST_SHA256}; refusing it")
    os.replace(tmp, dest)
    return dest
