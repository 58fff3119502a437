"""Overlays: box and seed, a detector's boxes with scores, degree heat map, seed mask, saliency heat
map; and saved figures that explain themselves (:func:`compose`: a title over each panel, a colour
bar under each map, a note such as "random: a pipeline check" under the whole).

Every overlay function takes an RGB uint8 ``(H, W, 3)`` image of any size plus coordinates in the
original image's pixels (``image_size``), and returns a new RGB uint8 array of the same size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .geometry import ImageGeometry

BOX_COLOR = (255, 40, 40)
SEED_COLOR = (40, 255, 40)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK = (20, 20, 20)


def _drawn(rgb: np.ndarray, image_size: tuple[int, int]) -> ImageGeometry:
    """The original image (``image_size``) against the picture drawn on (``rgb``)."""
    return ImageGeometry.at_stride(rgb.shape[:2], original_size=image_size)


def _corners(geometry: ImageGeometry, box: tuple[float, float, float, float]) -> tuple[tuple[int, int], tuple[int, int]]:
    """OpenCV's inclusive rectangle corners of an exclusive original-pixel box on the drawn picture."""
    x1, y1, x2, y2 = geometry.box_to_resized(box)
    return (round(x1), round(y1)), (round(x2) - 1, round(y2) - 1)


def draw_box(
    rgb: np.ndarray,
    box: tuple[float, float, float, float],
    image_size: tuple[int, int],
    seed_xy: tuple[float, float] | None = None,
    color: tuple[int, int, int] = BOX_COLOR,
) -> np.ndarray:
    """Draw ``box`` (x1, y1, x2, y2 exclusive, original pixels) and an optional seed dot."""
    out = rgb.copy()
    geometry = _drawn(rgb, image_size)
    thickness = max(2, round(max(rgb.shape[:2]) / 250))
    cv2.rectangle(out, *_corners(geometry, box), color, thickness)
    if seed_xy is not None:
        x, y = geometry.point_to_resized(seed_xy)
        cv2.circle(out, (round(x), round(y)), thickness * 2 + 1, SEED_COLOR, -1)
    return out


def draw_detections(
    rgb: np.ndarray,
    boxes: Sequence[tuple[float, float, float, float]],
    scores: Sequence[float],
    image_size: tuple[int, int],
    color: tuple[int, int, int] = BOX_COLOR,
) -> np.ndarray:
    """Draw several boxes (x1, y1, x2, y2 exclusive, original pixels), each with its score written
    at its top-left corner; the first (best) box is drawn last, so it stays on top."""
    out = rgb.copy()
    geometry = _drawn(rgb, image_size)
    thickness = max(1, round(max(rgb.shape[:2]) / 300))
    scale = max(0.35, max(rgb.shape[:2]) / 800)
    for box, score in reversed(list(zip(boxes, scores))):
        (left, top), corner = _corners(geometry, box)
        cv2.rectangle(out, (left, top), corner, color, thickness)
        text = f"{score:.2f}"
        (width, height), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        y = max(top, height + base)  # keep the label inside the picture
        cv2.rectangle(out, (left, y - height - base), (left + width, y), color, -1)
        cv2.putText(out, text, (left, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def heatmap(rgb: np.ndarray, values: np.ndarray | torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """Blend a ``(h, w)`` float map, min-max scaled and upsampled, over ``rgb`` with the JET colormap."""
    values = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    values = values.astype(np.float32)
    span = float(values.max() - values.min())
    scaled = (values - values.min()) / span if span > 0 else np.zeros_like(values)
    up = cv2.resize(scaled, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    colored = cv2.applyColorMap((up * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    return (rgb * (1 - alpha) + colored * alpha).astype(np.uint8)


def degree_map(rgb: np.ndarray, degree: torch.Tensor) -> np.ndarray:
    """Inverse degree as a heat map (hot = low degree = where LOST's seed comes from)."""
    return heatmap(rgb, -degree.float())


def mask_overlay(rgb: np.ndarray, mask: torch.Tensor, color: tuple[int, int, int] = BOX_COLOR) -> np.ndarray:
    """Tint the cells of a feature-grid ``mask`` (``(h, w)`` bool) in ``color``, dim the rest."""
    m = mask.cpu().numpy().astype(np.uint8)
    up = cv2.resize(m, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
    out = (rgb * 0.35).astype(np.uint8)
    out[up] = (rgb[up] * 0.5 + np.array(color) * 0.5).astype(np.uint8)
    return out


def on_padded(rgb: np.ndarray, geometry: ImageGeometry, draw) -> np.ndarray:
    """Apply a feature-grid overlay ``draw(canvas) -> canvas`` on the zero-padded canvas the
    network saw (``geometry.padded_size``), then crop back to ``rgb`` (``geometry.size``): grid cells stay aligned."""
    height, width = geometry.size
    canvas = np.zeros((*geometry.padded_size, 3), np.uint8)
    canvas[:height, :width] = rgb
    return np.ascontiguousarray(draw(canvas)[:height, :width])


def lost_panels(rgb: np.ndarray, padded_size: tuple[int, int], loc) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Box and seed, the map the seed came from (LOST's inverse degree, TokenCut's Fiedler vector),
    seed mask for a :class:`~discovery.localizer.Localization` computed on ``rgb`` (the network's
    unpadded input) padded to ``padded_size``."""
    geometry = ImageGeometry(loc.image_size, rgb.shape[:2], tuple(padded_size), loc.stride)
    if loc.eigenvector is not None:
        def seed_map(canvas: np.ndarray) -> np.ndarray:
            return heatmap(canvas, loc.eigenvector)
    else:
        def seed_map(canvas: np.ndarray) -> np.ndarray:
            return degree_map(canvas, loc.degree)
    return (
        draw_box(rgb, loc.box, loc.image_size, loc.seed_xy),
        on_padded(rgb, geometry, seed_map),
        on_padded(rgb, geometry, lambda canvas: mask_overlay(canvas, loc.mask)),
    )


def side_by_side(*panels: np.ndarray, gap: int = 8) -> np.ndarray:
    """Concatenate same-height panels horizontally with a white gap."""
    height = panels[0].shape[0]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    parts = []
    for panel in panels:
        parts += [panel, spacer]
    return np.concatenate(parts[:-1], axis=1)


@dataclass(frozen=True)
class Panel:
    """One picture of a saved figure: its ``title``, and for a heat map the words at the two ends
    of its colour bar (``colorbar = (cold end, hot end)``; JET, as :func:`heatmap` draws)."""

    image: np.ndarray
    title: str
    colorbar: tuple[str, str] | None = None


def _text_strip(text: str, width: int, height: int, color: tuple[int, int, int] = _INK) -> np.ndarray:
    """White ``height`` x ``width`` strip with ``text`` on one line, shrunk until it fits."""
    strip = np.full((height, width, 3), 255, np.uint8)
    scale = height / 40
    while scale > 0.2 and cv2.getTextSize(text, _FONT, scale, 1)[0][0] > width - 6:
        scale *= 0.9
    (_, h), base = cv2.getTextSize(text, _FONT, scale, 1)
    cv2.putText(strip, text, (3, (height + h) // 2), _FONT, scale, color, 1, cv2.LINE_AA)
    return strip


def _colorbar(ends: tuple[str, str], width: int, height: int) -> np.ndarray:
    """A JET gradient bar with its two ends named, under a heat map."""
    ramp = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height // 2, 1))
    bar = cv2.applyColorMap(ramp, cv2.COLORMAP_JET)[:, :, ::-1]
    words = np.full((height - height // 2, width, 3), 255, np.uint8)
    scale = words.shape[0] / 34
    cold, hot = ends
    (hot_w, _), base = cv2.getTextSize(hot, _FONT, scale, 1)
    y = words.shape[0] - base - 1  # room for the descenders
    cv2.putText(words, cold, (2, y), _FONT, scale, _INK, 1, cv2.LINE_AA)
    cv2.putText(words, hot, (max(2, width - hot_w - 2), y), _FONT, scale, _INK, 1, cv2.LINE_AA)
    return np.concatenate([bar, words], axis=0)


def compose(panels: Sequence[Panel], note: str | None = None, gap: int = 8) -> np.ndarray:
    """Same-height panels side by side, each titled, maps with a colour bar, and ``note`` (e.g. the
    ``random`` backbone's "a pipeline check, not a model") in red across the bottom."""
    height = panels[0].image.shape[0]
    title_h = max(18, min(36, height // 8))
    bar_h = title_h
    columns = []
    for panel in panels:
        width = panel.image.shape[1]
        below = _colorbar(panel.colorbar, width, bar_h) if panel.colorbar else np.full((bar_h, width, 3), 255, np.uint8)
        columns.append(np.concatenate([_text_strip(panel.title, width, title_h), panel.image, below], axis=0))
    figure = side_by_side(*columns, gap=gap)
    if note:
        figure = np.concatenate([figure, _text_strip(note, figure.shape[1], title_h, color=(200, 0, 0))], axis=0)
    return figure
