"""Durable file writes: every file the toolkit replaces goes through :func:`atomic_write`.

A temporary file beside the target, flushed and fsynced, then ``os.replace`` and an fsync of the
folder: a reader sees the old file or the new one, never a torn one, also after a power cut.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def _fsync_path(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Replace ``path`` with what ``write(tmp)`` writes to a temporary path beside it.

    ``write`` may be any writer that takes a path (``torch.save``, safetensors' ``save_file``...).
    The temporary file is removed when ``write`` fails; ``path`` is then left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_path(path.parent, directory=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def fsync_folder(path: str | Path) -> None:
    """Make a rename or a new entry in folder ``path`` durable (best effort)."""
    _fsync_path(Path(path), directory=True)
