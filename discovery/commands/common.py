"""What the per-image commands (``locate``, ``explain``, ``demo``) share: the loop over user images
that survives an unreadable one, the overlay naming rule, and the labelled ``random`` fallback."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from .. import viz
from ..explain import CamResult
from ..images import IMAGE_SUFFIXES, ImageError, image_files
from ..localizer import Embedding, Localization
from ..weights import WeightsError

T = TypeVar("T")

class ImageLoop:
    """Iterate ``(image, load(image))`` over user-given images, a folder standing for the images in
    it (recursively, :func:`~discovery.images.image_files`); an unreadable one gets one
    ``error: <file>: <reason>`` line on stderr and is counted, and the others still run.

    ``exit_code`` is 1 once any image failed, else 0.
    """

    def __init__(self, images: Iterable[str], load: Callable[[str], T]):
        self.images, self.load, self.failed = list(images), load, 0

    def _expanded(self) -> Iterator[str]:
        for image in self.images:
            if not Path(image).is_dir():
                yield image
                continue
            found = image_files(image)
            if not found:
                print(f"error: {image}: a folder with no images (looked recursively for {' '.join(IMAGE_SUFFIXES)})", file=sys.stderr)
                self.failed += 1
            yield from map(str, found)

    def __iter__(self) -> Iterator[tuple[str, T]]:
        for image in self._expanded():
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


def lost_figure(emb: Embedding, loc: Localization, note: str | None) -> np.ndarray:
    """Box and seed | the seed's map with its colour bar (LOST's inverse degree, TokenCut's Fiedler
    vector) | seed component, titled; ``note`` (a pipeline check's
    :attr:`~discovery.backbone.BackboneInfo.pipeline_check`) across the bottom."""
    box, seed_map, mask = viz.lost_panels(emb.image.rgb, tuple(emb.image.tensor.shape[1:]), loc)
    if loc.method == "tokencut":
        map_panel = viz.Panel(seed_map, "Fiedler vector", colorbar=("other side", "seed's side"))
        title, setting = "TokenCut", f"tau={loc.tau:g}"
    else:
        map_panel = viz.Panel(seed_map, "inverse degree", colorbar=("many links", "few links: seed"))
        title, setting = "LOST", f"k={loc.k}"
    return viz.compose(
        [
            viz.Panel(box, f"{title} box and seed ({loc.backbone}, stride {loc.stride})"),
            map_panel,
            viz.Panel(mask, f"seed component ({setting})"),
        ],
        note=note,
    )


def cam_figure(rgb: np.ndarray, res: CamResult, backbone: str, note: str | None) -> np.ndarray:
    """The heat map over the image with the CAM box drawn on it, titled, with its colour bar and ``note``."""
    overlay = viz.draw_box(viz.heatmap(rgb, res.cam), res.box, res.embedding.image.original_size)
    title = f"{res.method}: {res.target_name} ({backbone})"
    if res.probability is not None:
        title = f"{res.method}: {res.target_name} p={res.probability:.2f} ({backbone})"
    return viz.compose([viz.Panel(overlay, title, colorbar=("low", "high"))], note=note)


def with_random_fallback(build: Callable[[str], T], backbone: str) -> T:
    """``build(backbone)``, or, when its weights cannot be had (offline, not downloaded), say so in
    one line and ``build("random")``: what ``demo`` and the bundled examples do so they run anywhere."""
    try:
        return build(backbone)
    except WeightsError as err:
        print(f"note: {err}", file=sys.stderr)
        print("note: carrying on with backbone 'random': a pipeline check, not a result", file=sys.stderr)
        return build("random")
