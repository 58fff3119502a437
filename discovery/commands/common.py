"""What the per-image commands (``locate``, ``explain``, ``demo``) share: the loop over user images
that survives an unreadable one, the overlay naming rule, and the labelled ``random`` fallback."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from ..images import ImageError
from ..weights import WeightsError

T = TypeVar("T")

RANDOM_NOTE = "note: backbone 'random' is a pipeline check, not a model"


class ImageLoop:
    """Iterate ``(image, load(image))`` over user-given images; an unreadable one gets one
    ``error: <file>: <reason>`` line on stderr and is counted, and the others still run.

    ``exit_code`` is 1 once any image failed, else 0.
    """

    def __init__(self, images: Iterable[str], load: Callable[[str], T]):
        self.images, self.load, self.failed = list(images), load, 0

    def __iter__(self) -> Iterator[tuple[str, T]]:
        for image in self.images:
            try:
                loaded = self.load(image)
            except ImageError as err:
                print(f"error: {image}: {err}", file=sys.stderr)
                self.failed += 1
                continue
            yield image, loaded

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def _slug(text: str) -> str:
    """A backbone name as a file-name part (``pul:/x/y.safetensors`` → ``pul-y``)."""
    if "/" in text or "\\" in text:
        kind, _, path = text.rpartition(":")
        text = f"{kind}-{Path(path).stem}" if kind else Path(path).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "backbone"


class OverlayNames:
    """The one naming rule of overlay files: ``<image stem>_<backbone>_<what>.png`` in ``folder``
    (``what``: ``lost``, ``gradcam``...), ``-1``, ``-2``... appended when two images share a stem, so
    runs with different backbones or methods into one folder never overwrite each other's files."""

    def __init__(self, folder: Path):
        self.folder, self.taken = folder, set()

    def __call__(self, image: str | Path, backbone: str, what: str, suffix: str = ".png") -> Path:
        stem = f"{Path(image).stem}_{_slug(backbone)}_{what}"
        path, n = self.folder / f"{stem}{suffix}", 1
        while path in self.taken:
            path, n = self.folder / f"{stem}-{n}{suffix}", n + 1
        self.taken.add(path)
        return path


def with_random_fallback(build: Callable[[str], T], backbone: str) -> T:
    """``build(backbone)``, or, when its weights cannot be had (offline, not downloaded), say so in
    one line and ``build("random")``: what ``demo`` and the bundled examples do so they run anywhere."""
    try:
        return build(backbone)
    except WeightsError as err:
        print(f"note: {err}", file=sys.stderr)
        print("note: carrying on with backbone 'random': a pipeline check, not a result", file=sys.stderr)
        return build("random")
