"""Where a result came from: the source revision recorded in run configs and checkpoints."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_revision() -> str:
    """``HEAD`` of the checkout this package runs from (``+dirty`` with local changes), or ``unknown``
    (an installed wheel, no git)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
