"""Where the downloadable JSON results go: a private temporary folder that keeps the newest few."""

from __future__ import annotations

import json
import tempfile
import threading
import uuid
from collections import deque
from pathlib import Path
from typing import Any


class ResultFiles:
    """Writes each result as ``<folder>/<id>/discovery-result.json`` and keeps the newest ``keep``.

    The folder is removed when this object is garbage-collected or the process exits.
    """

    def __init__(self, keep: int = 64):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self._dir = tempfile.TemporaryDirectory(prefix="discovery-app-", ignore_cleanup_errors=True)
        self._written: deque[Path] = deque()
        self._keep = keep
        self._lock = threading.Lock()

    @property
    def folder(self) -> Path:
        return Path(self._dir.name)

    def write(self, record: dict[str, Any], name: str = "discovery-result.json") -> Path:
        """Write ``record`` as indented JSON; return the file's path (unique per call)."""
        sub = self.folder / uuid.uuid4().hex
        sub.mkdir()
        path = sub / name
        path.write_text(json.dumps(record, indent=2) + "\n")
        with self._lock:
            self._written.append(path)
            while len(self._written) > self._keep:
                old = self._written.popleft()
                old.unlink(missing_ok=True)
                old.parent.rmdir()
        return path
