"""Durable file writes: every file the toolkit replaces goes through :func:`atomic_write`.

A temporary file beside the target, flushed and fsynced, then ``os.replace`` and an fsync of the
folder: a reader sees the old file or the new one, never a torn one, also after a power cut.
"""

from __future__ import annotations

import glob
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


def _temporary(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.tmp{pid}")


def _umask() -> int:
    # os.umask can only be read by setting it: set it back at once
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Replace ``path`` with what ``write(tmp)`` writes to a temporary path beside it.

    ``write`` may be any writer that takes a path (``torch.save``, safetensors' ``save_file``...).
    The temporary file is removed when ``write`` fails; ``path`` is then left as it was. The file
    gets the mode an ordinary new file gets under the umask, whatever mode the writer created it
    with (safetensors creates 0600).
    """
    path = Path(path)
    tmp = _temporary(path, os.getpid())
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_path(path.parent, directory=True)
    return path


def stale_temporaries(path: str | Path) -> list[Path]:
    """The temporary files of :func:`atomic_write` for ``path`` whose writing process on this
    machine is gone (left by a kill in the middle of a write)."""
    path = Path(path)
    prefix = f".{path.name}.tmp"
    stale = []
    for candidate in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = candidate.name[len(prefix):]
        if pid.isdigit() and not _alive(int(pid)):
            stale.append(candidate)
    return sorted(stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but someone else's
        pass
    return True


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def fsync_folder(path: str | Path) -> None:
    """Make a rename or a new entry in folder ``path`` durable (best effort)."""
    _fsync_path(Path(path), directory=True)
