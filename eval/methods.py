"""Box-proposal methods the harness can evaluate, by name.

Two kinds:

- a :data:`FeatureMethod` maps a :class:`~discovery.localizer.Localizer` and a batch of computed
  embeddings (same padded size) to one :class:`Proposal` per image, in original-image pixels. To
  add one, write such a function and add it to :data:`METHODS` (and any run option it reads
  besides ``k`` to :data:`METHOD_OPTIONS`); ``python -m eval run --method NAME`` then evaluates it.
- a :class:`PixelMethod` reads the decoded images themselves (RGB uint8 arrays at native
  resolution) and no backbone features, so the runner loads no backbone for it. ``cad:FILE``, a
  trained detector (``discovery cad train``), is one; its proposals carry every box with its score
  besides the top one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from discovery.defaults import DEFAULT_TAU
from discovery.detector import Detector
from discovery.explain import Explainer
from discovery.localizer import Embedding, Localizer


@dataclass(frozen=True)
class Proposal:
    """One image's answer: ``box`` ``(x1, y1, x2, y2)`` float pixels of the original image
    (right/bottom exclusive; ``None``: nothing found) and optionally a ``seed`` point ``(x, y)`` in
    pixels; a detector also gives all its ``boxes`` and their ``scores``, best first."""

    box: tuple[float, float, float, float] | None
    seed: tuple[float, float] | None = None
    boxes: tuple[tuple[float, float, float, float], ...] | None = None
    scores: tuple[float, ...] | None = None


#: ``method(localizer, embeddings, k, **options)`` → one proposal per embedding; ``k`` is LOST's
#: candidate count, ``options`` the further run options the method names in :data:`METHOD_OPTIONS`.
FeatureMethod = Callable[..., list[Proposal]]


def lost(localizer: Localizer, embeddings: Sequence[Embedding], k: int) -> list[Proposal]:
    """LOST (docs/protocol.md): the localizer's box and the centre of its seed cell."""
    return [Proposal(loc.box, loc.seed_xy) for loc in localizer.localize(list(embeddings), k=k)]


def gradcam(localizer: Localizer, embeddings: Sequence[Embedding], k: int) -> list[Proposal]:
    """Grad-CAM box (docs/explain.md): the top-1 class's map (the pooled-feature norm for headless
    backbones), thresholded at :data:`discovery.explain.DEFAULT_THRESHOLD` of its maximum, largest
    connected component. A classic baseline, scored with the same protocol as LOST (``k`` unused)."""
    return [Proposal(cam.box) for cam in Explainer(localizer).explain(list(embeddings))]


def tokencut(localizer: Localizer, embeddings: Sequence[Embedding], k: int, tau: float = DEFAULT_TAU) -> list[Proposal]:
    """TokenCut (docs/protocol.md) on the localizer's feature map with threshold ``tau``: its box and
    the centre of its seed cell, in original pixels (``k`` unused)."""
    found = localizer.localize(list(embeddings), method="tokencut", tau=tau)
    return [Proposal(loc.box, loc.seed_xy) for loc in found]


METHODS: MappingProxyType[str, FeatureMethod] = MappingProxyType({"lost": lost, "gradcam": gradcam, "tokencut": tokencut})
#: The :class:`~eval.run_options.RunOptions` fields a feature method takes as keywords besides ``k``;
#: a run records them in config.json (as it records ``k``), so resuming with another value is refused.
METHOD_OPTIONS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType({"tokencut": ("tau",)})


class PixelMethod(ABC):
    """A method that reads the decoded images, not backbone features (no backbone is loaded for it)."""

    @abstractmethod
    def load(self, device: str) -> None:
        """Get ready to run on ``device`` (called once per process, before :meth:`propose`)."""

    @abstractmethod
    def propose(self, images: Sequence[np.ndarray]) -> list[Proposal]:
        """One proposal per RGB uint8 ``(H, W, 3)`` image of one padded size, in its pixels."""

    @abstractmethod
    def config(self) -> dict:
        """What decides its boxes besides the images (recorded in the run's config.json); valid after :meth:`load`."""


Method = FeatureMethod | PixelMethod

CAD_PREFIX = "cad:"


class DetectorMethod(PixelMethod):
    """``cad:FILE``: the detector's boxes on each image (LOST+CAD's protocol: CorLoc from the
    top-scoring box)."""

    def __init__(self, path: Path):
        self.path = path
        self.detector: Detector | None = None

    def load(self, device: str) -> None:
        self.detector = Detector(self.path, device=device, max_side=None)

    def propose(self, images: Sequence[np.ndarray]) -> list[Proposal]:
        return [Proposal(d.box, None, d.boxes, d.scores) for d in self.detector.detect(list(images))]

    def config(self) -> dict:
        return {"detector_sha256": self.detector.sha256, "detector_base": self.detector.metadata["base"]["name"]}


def get_method(name: str) -> Method:
    """The method called ``name`` (or ``cad:FILE``); ``ValueError`` (one line) for an unknown one."""
    if name.startswith(CAD_PREFIX) and len(name) > len(CAD_PREFIX):
        path = Path(name[len(CAD_PREFIX):]).expanduser()
        if not path.is_file():
            raise ValueError(f"--method {name}: no detector file {path}")
        return DetectorMethod(path)
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}, cad:FILE") from None
