"""Two backbones on one image, for the app (no Gradio code): the panels of each in a row (LOST box
and seed, inverse degree, Grad-CAM with its box) and what changed, measured by
:mod:`discovery.eval.compare` on the engine's cached models (one forward pass per model)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from discovery import viz
from discovery.eval.compare import View, function_change, map_change, view
from discovery.eval.metrics import iou
from discovery.images import ImageInput

from .choices import RANDOM_NOTE
from .engine import CAM_BOX_COLOR, Engine


@dataclass(frozen=True)
class PairView:
    """``rows[m]``: model ``m``'s ``(box, degree, cam)`` panels (RGB uint8, at the network's
    resolution); ``record``: JSON-able boxes, targets and changes (boxes in original pixels)."""

    rows: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]
    record: dict[str, Any]


def _panels(v: View) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prepared, loc = v.cam.embedding.image, v.lost
    box, degree, _ = viz.lost_panels(prepared.rgb, tuple(prepared.tensor.shape[1:]), loc)
    cam = viz.draw_box(viz.heatmap(prepared.rgb, v.cam.cam), v.cam.box, loc.image_size, color=CAM_BOX_COLOR)
    return box, degree, cam


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def compare_pair(engine: Engine, image: ImageInput, first: str, second: str, stride: int = 16, k: int = 100) -> PairView:
    """``first`` and ``second`` (backbone names) on ``image``, the first as the reference.

    Raises WeightsError, ImageError, ValueError: one-line user errors (as :meth:`Engine.analyze`).
    """
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    explainers = [engine.explainer(name, int(stride))[0] for name in (first, second)]
    views = [view(e, image, k) for e in explainers]
    function, maps = function_change(views[:1], views[1:]), map_change(views[:1], views[1:])
    models = []
    for e, v in zip(explainers, views):
        info = e.backbone.info
        models.append({
            "backbone": info.name, "weights_sha256": info.sha256, **({"note": RANDOM_NOTE} if info.is_random else {}),
            "lost_box": [round(float(x), 2) for x in v.lost.box], "seed": [round(float(x), 2) for x in v.lost.seed_xy],
            "tokencut_box": [round(float(x), 2) for x in v.tokencut.box],
            "gradcam": {**v.cam.to_json(), "threshold": v.cam.threshold},
        })
    a, b = views
    record = {
        "box_format": "x1, y1, x2, y2 in original image pixels, right/bottom exclusive",
        "reference": first,
        "models": models,
        "lost_box_iou": round(float(iou(a.lost.box, np.array([b.lost.box]))[0]), 4),
        "gradcam_box_iou": round(float(iou(a.cam.box, np.array([b.cam.box]))[0]), 4),
        "kl_reference_to_other": None if function is None else _number(function.kl),
        "same_top1": None if function is None else function.top1 == 1.0,
        "degree_map_r": _number(maps.degree),
        "gradcam_map_r": _number(maps.cam),
    }
    return PairView(tuple(_panels(v) for v in views), record)


def summary(record: dict[str, Any]) -> str:
    """One Markdown status line of a comparison."""
    parts = [f"LOST boxes IoU {record['lost_box_iou']:.2f}", f"Grad-CAM boxes IoU {record['gradcam_box_iou']:.2f}"]
    if record["kl_reference_to_other"] is not None:
        same = "same top-1" if record["same_top1"] else "top-1 differs"
        parts.append(f"KL(A ‖ B) {record['kl_reference_to_other']:.3g}, {same}")
    for name, key in (("degree map r", "degree_map_r"), ("Grad-CAM map r", "gradcam_map_r")):
        if record[key] is not None:
            parts.append(f"{name} {record[key]:.3f}")
    notes = [f"⚠ **{m['backbone']}: {m['note']}**" for m in record["models"] if "note" in m]
    return " · ".join([*notes, "**Compared.** " + parts[0], *parts[1:]])
