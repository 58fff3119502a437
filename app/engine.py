"""The app's engine, free of Gradio: cached backbones, one forward pass for discovery (LOST or
TokenCut) and Grad-CAM, panels.

:class:`Engine` keeps loaded models in a small LRU cache keyed by ``(backbone, stride)`` and turns
one image into an :class:`Analysis` (four RGB panels, a fifth with a detector's boxes and scores
when a ``discovery cad train`` checkpoint is given, and a JSON-able record). Detectors are cached
by file too. It raises the
library's one-line errors (:class:`~discovery.weights.WeightsError`,
:class:`~discovery.images.ImageError`, :class:`ValueError`) for user mistakes; the UI shows them.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from discovery import options, viz
from discovery import names as N
from discovery import weights as W
from discovery.backbone import Backbone
from discovery.backbones import load_backbone
from discovery.defaults import DEFAULT_TAU, DISCOVERY_METHODS, STRIDES
from discovery.detector import Detections, Detector
from discovery.explain import Explainer
from discovery.images import ImageInput, PreparedImage
from discovery.localizer import DEFAULT_MAX_SIDE, Localizer

from .choices import CHECKPOINT, RANDOM_NOTE

CAM_METHODS = ("gradcam", "eigencam")
MAX_GRID = 64
"""Longest side of the feature grid: bounds LOST's N×N affinity (N ≤ 4096, 64 MiB float32)."""
CAM_BOX_COLOR = (255, 255, 255)
DETECTOR_COLOR = (255, 200, 0)
DEFAULT_TOP_K = 5
MAX_TOP_K = 100


def backbone_name(choice: str, checkpoint: str = "") -> str:
    """The :func:`~discovery.backbones.load_backbone` name for a dropdown value and checkpoint text.

    The text takes any name the command line takes (``timm:vit_small_patch16_224``,
    ``random-vits16``...); other text is a checkpoint path. Raises ValueError (one line) when the
    checkpoint entry is chosen with no text, or for an unknown dropdown value.
    """
    if choice == CHECKPOINT:
        text = (checkpoint or "").strip()
        if not text:
            raise ValueError("backbone 'checkpoint' needs a path: type pul:PATH, a .safetensors/.pt/.pth file, timm:NAME or module:pkg.mod:factory")
        return _typed_name(text)
    try:
        N.parse_backbone_name(choice)
    except W.WeightsError as err:
        raise ValueError(f"{err}, or {CHECKPOINT!r}") from None
    return choice


def _typed_name(text: str) -> str:
    """A name as typed when the grammar knows it (a malformed ``timm:`` / ``module:`` / ``pul:``
    one included: loading it says what is wrong), else ``pul:TEXT``, a checkpoint path."""
    try:
        N.parse_backbone_name(text)
    except W.WeightsError:
        if not text.startswith((N.CHECKPOINT_PREFIX, *N.EXTERNAL_PREFIXES)):
            return f"{N.CHECKPOINT_PREFIX}{text}"
    return text


def parse_tau(value: float | str | None) -> float:
    """TokenCut's τ from the UI: a number, a cosine similarity in [-1, 1]; raises ValueError (one line)."""
    try:
        return options.cosine(str(value))  # the command line's --tau check
    except argparse.ArgumentTypeError as err:
        raise ValueError(f"tau {err}") from None
    except ValueError:  # None and bad text
        raise ValueError(f"tau must be a number (a cosine similarity in [-1, 1]), got {value!r}") from None


def parse_target(text: str | int | None) -> int | str | None:
    """CAM target from the UI: blank → ``None`` (top-1), digits → class index, else a class name."""
    if text is None:
        return None
    if isinstance(text, int):
        return text
    text = text.strip()
    if not text:
        return None
    return int(text) if text.isdigit() else text


@dataclass(frozen=True)
class Analysis:
    """One request's result.

    Attributes:
        box_image: ``(H, W, 3)`` uint8, the image with the discovery box (red) and seed (green dot).
        degree_image: the map the seed came from: LOST's inverse degree (hot = low degree), or
            TokenCut's Fiedler eigenvector (hot = the seed's side of the cut).
        mask_image: the seed's component tinted, the rest dimmed.
        cam_image: the CAM heat map with the CAM box (white).
        detector_image: a detector's boxes with their scores, ``None`` when no detector was given.
        record: JSON-able dict: ``method`` (``lost`` / ``tokencut``), ``k`` and ``tau`` (``None``
            for LOST), and under the method's name the box ``[x1, y1, x2, y2]`` in original pixels
            (right/bottom exclusive) and seed ``[x, y]`` pixels; CAM target and probability,
            timings in ms; with a detector, ``detector: {boxes, scores, sha256, path, top_k}``
            (boxes best first).
    All panels are at the resolution the network saw (``max_side`` bounded), boxes in original pixels.
    """

    box_image: np.ndarray
    degree_image: np.ndarray
    mask_image: np.ndarray
    cam_image: np.ndarray
    detector_image: np.ndarray | None
    record: dict[str, Any]


class Engine:
    """Loads backbones on demand (cached) and analyses images.

    Args:
        device: torch device the backbones run on.
        weights_dir: folder of registry weights (default :func:`discovery.weights.default_weights_dir`).
        download: fetch missing registry weights on first use (off: the app does no network I/O).
        max_side: longest image side fed to the network (further capped at ``64 × stride`` so the
            affinity matrix stays ≤ 4096²); boxes are reported in original pixels regardless.
        cache_size: how many ``(backbone, stride)`` models stay loaded (~100 MB each), and how
            many detectors (~130 MB each).
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        weights_dir: str | Path | None = None,
        download: bool = False,
        max_side: int | None = DEFAULT_MAX_SIDE,
        cache_size: int = 3,
    ):
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self.device = torch.device(device)
        self.weights_dir = Path(weights_dir) if weights_dir is not None else None
        self.download = download
        self.max_side = max_side
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, int], Explainer] = OrderedDict()
        self._detectors: OrderedDict[tuple[str, int, int], Detector] = OrderedDict()
        self._cache_lock = threading.Lock()

    def max_side_for(self, stride: int) -> int:
        """Longest image side (pixels) the network sees at ``stride``."""
        cap = MAX_GRID * stride
        return cap if self.max_side is None else min(self.max_side, cap)

    def cached(self) -> list[tuple[str, int]]:
        """The ``(backbone, stride)`` keys loaded now, least recently used first."""
        with self._cache_lock:
            return list(self._cache)

    def add(self, backbone: Backbone) -> None:
        """Serve an already loaded backbone under ``(backbone.name, backbone.stride)`` (cached like a loaded one)."""
        with self._cache_lock:
            self._insert((backbone.name, backbone.stride), backbone)

    def _insert(self, key: tuple[str, int], backbone: Backbone) -> Explainer:
        """Cache an explainer for ``backbone`` under ``key``, evicting the least recently used (lock held)."""
        localizer = Localizer(backbone, max_side=self.max_side_for(backbone.stride))
        self._cache[key] = explainer = Explainer(localizer)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return explainer

    def explainer(self, name: str, stride: int) -> tuple[Explainer, bool]:
        """The cached explainer (and its localizer) for ``(name, stride)``; ``(explainer, loaded_now)``.

        Raises WeightsError (one line) when the backbone cannot be loaded.
        """
        if stride not in STRIDES:
            raise ValueError(f"stride must be one of {STRIDES}, got {stride}")
        key = (name, stride)
        with self._cache_lock:  # loads are serialised: two first requests load once
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key], False
            parsed = N.parse_backbone_name(name)
            if parsed.kind == "timm" and parsed.path is None and not self.download:
                # timm would fetch its weights itself: the app does no network I/O unless told
                raise W.WeightsError(f"backbone {name!r} needs timm's download: start the app with --download, "
                                     f"or give a local file: timm:{parsed.value}@/path/weights.safetensors")
            backbone = load_backbone(
                name, device=self.device, stride=stride, weights_dir=self.weights_dir, download=self.download
            )
            return self._insert(key, backbone), True

    def detector(self, path: str | Path) -> tuple[Detector, bool]:
        """The cached :class:`~discovery.detector.Detector` of the checkpoint at ``path``;
        ``(detector, loaded_now)``. A file rewritten in place is loaded again.

        Raises ValueError (no such file) or WeightsError (not a detector checkpoint), one line.
        """
        path = Path(str(path).strip()).expanduser()
        if not path.is_file():
            raise ValueError(f"detector {path}: no such file (a `discovery cad train` checkpoint)")
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        with self._cache_lock:
            if key in self._detectors:
                self._detectors.move_to_end(key)
                return self._detectors[key], False
            detector = Detector(path, device=self.device, max_side=self.max_side)
            self._detectors[key] = detector
            while len(self._detectors) > self.cache_size:
                self._detectors.popitem(last=False)
            return detector, True

    def analyze(
        self,
        image: ImageInput,
        backbone: str = "imagenet",
        stride: int = 16,
        k: int = 100,
        method: str = "gradcam",
        target: int | str | None = None,
        detector: str | Path | None = None,
        top_k: int = DEFAULT_TOP_K,
        discovery_method: str = "lost",
        tau: float = DEFAULT_TAU,
    ) -> Analysis:
        """Localize the object (LOST or TokenCut) and explain the prediction with a CAM, from ONE forward pass.

        Args:
            image: a path, PIL image, RGB uint8 array... (see :mod:`discovery.images`).
            backbone: a :func:`~discovery.backbones.load_backbone` name (see :func:`backbone_name`).
            stride: 8, 16 or 32 (a ViT's is its patch size); k: LOST's expansion candidates (≥ 1).
            method: ``gradcam`` or ``eigencam``; target: ``None`` (top-1), a class index or name.
            detector: a ``discovery cad train`` checkpoint (blank/``None``: none); its ``top_k``
                best boxes (1..100) are drawn with their scores on a fifth panel.
            discovery_method: ``lost`` or ``tokencut``; tau: TokenCut's graph threshold, a cosine
                similarity in [-1, 1] (checked for either method, as the command line does).

        Raises:
            WeightsError, ImageError, ValueError: one-line user errors.
        """
        if method not in CAM_METHODS:
            raise ValueError(f"CAM method must be one of {', '.join(CAM_METHODS)}, got {method!r}")
        if discovery_method not in DISCOVERY_METHODS:
            raise ValueError(f"discovery method must be one of {', '.join(DISCOVERY_METHODS)}, got {discovery_method!r}")
        tau = parse_tau(tau)
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        top_k = int(top_k)
        if not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top-k must be 1..{MAX_TOP_K}, got {top_k}")
        detector_path = str(detector).strip() if detector is not None else ""
        timings: dict[str, float] = {}
        start = clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = round((now - clock) * 1000, 1)
            clock = now

        explainer, loaded_now = self.explainer(backbone, int(stride))
        explainer.check(method, target)  # a bad target fails before the forward pass
        lap("load_backbone")
        found_by = self.detector(detector_path)[0] if detector_path else None  # a bad file fails early too
        if found_by is not None:
            lap("load_detector")
        localizer = explainer.localizer
        prepared = localizer.prepare(image)
        lap("prepare")
        embedding = localizer.embed(prepared)  # the one forward pass both queries read
        lap("forward")
        cam = explainer.explain(embedding, method=method, target=target)
        lap("cam")
        loc = localizer.localize(embedding, k=k, method=discovery_method, tau=tau)
        lap(discovery_method)
        found = None
        if found_by is not None:
            found = found_by.detect([prepared.rgb], [loc.image_size], top_k=top_k)[0]
            lap("detector")
        panels = _render(prepared, loc, cam, found)
        lap("render")
        timings["total"] = round((time.perf_counter() - start) * 1000, 1)
        info = explainer.backbone.info
        record = {
            "box_format": "x1, y1, x2, y2 in original image pixels, right/bottom exclusive",
            "image_size": {"width": loc.image_size[1], "height": loc.image_size[0]},
            "processed_size": {"width": prepared.size[1], "height": prepared.size[0]},
            "backbone": info.name,
            "weights_sha256": info.sha256,
            **({"note": RANDOM_NOTE} if info.is_random else {}),
            "stride": loc.stride,
            "method": loc.method,
            "k": loc.k,
            "tau": loc.tau,
            loc.method: {
                "box": _round(loc.box),
                "seed": _round(loc.seed_xy),
                "seed_cell": list(loc.seed),
            },
            "cam": {**cam.to_json(), "threshold": cam.threshold},
            **({"detector": {**found.to_json(), "sha256": found_by.sha256, "path": str(found_by.path),
                             "top_k": top_k}} if found is not None else {}),
            "backbone_loaded_now": loaded_now,
            "timings_ms": timings,
        }
        return Analysis(*panels, record=record)


def _round(values) -> list[float]:
    return [round(float(v), 2) for v in values]


def _render(prepared: PreparedImage, loc, cam, found: Detections | None):
    """The five panels (the last ``None`` without detections), at the network's resolution."""
    rgb = prepared.rgb
    box_image, degree_image, mask_image = viz.lost_panels(rgb, tuple(prepared.tensor.shape[1:]), loc)
    cam_image = viz.draw_box(viz.heatmap(rgb, cam.cam), cam.box, loc.image_size, color=CAM_BOX_COLOR)
    detector_image = None
    if found is not None:
        detector_image = viz.draw_detections(rgb, found.boxes, found.scores, loc.image_size, color=DETECTOR_COLOR)
    return box_image, degree_image, mask_image, cam_image, detector_image
