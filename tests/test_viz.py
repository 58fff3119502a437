"""Overlays: boxes land on the right pixels of a picture of any size; grid overlays stay on their cells."""

from __future__ import annotations

import numpy as np
import torch

from discovery import viz


def _painted(out: np.ndarray, color) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero((out == np.array(color, np.uint8)).all(axis=2))
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def test_box_in_original_pixels_lands_on_a_half_size_picture():
    rgb = np.zeros((50, 80, 3), np.uint8)  # the 100x160 original, shown at half size
    out = viz.draw_box(rgb, (20.0, 10.0, 100.0, 60.0), (100, 160))
    # corners (10, 5) and (49, 29) (exclusive edges: the far corner one less), lines 2 pixels thick
    assert _painted(out, viz.BOX_COLOR) == (9, 4, 50, 30)
    assert not rgb.any()  # the input is not drawn on
    dot = viz.draw_box(rgb, (0.0, 0.0, 160.0, 100.0), (100, 160), seed_xy=(80.0, 50.0))
    assert (dot[25, 40] == viz.SEED_COLOR).all()


def test_detections_best_box_on_top():
    rgb = np.zeros((40, 40, 3), np.uint8)
    out = viz.draw_detections(rgb, [(0.0, 0.0, 40.0, 40.0), (0.0, 0.0, 40.0, 40.0)], [0.9, 0.1], (40, 40), color=(0, 0, 255))
    assert (out[39, 20] == (0, 0, 255)).all()


def test_grid_overlays_are_drawn_on_the_padded_canvas_and_cropped():
    class Loc:  # the fields of a Localization that lost_panels reads
        box, seed_xy, image_size, stride = (0.0, 0.0, 16.0, 16.0), (8.0, 8.0), (20, 40), 16
        degree = torch.arange(6).reshape(2, 3)
        mask = torch.tensor([[False, False, True], [False, False, False]])
        eigenvector = None  # LOST's: the seed map is the inverse degree

    rgb = np.full((20, 40, 3), 200, np.uint8)  # padded to 32x48 at stride 16
    box, degree, mask = viz.lost_panels(rgb, (32, 48), Loc)
    assert box.shape == degree.shape == mask.shape == rgb.shape
    # the masked cell is columns 32..47 of the padded canvas: columns 32..39 of the picture
    tinted = (mask != (rgb * 0.35).astype(np.uint8)).any(axis=2)
    assert tinted[:16, 32:].all() and not tinted[:, :32].any() and not tinted[16:].any()


def test_saved_figures_have_titles_colour_bars_and_the_note():
    rgb = np.full((64, 80, 3), 128, np.uint8)
    plain = viz.compose([viz.Panel(rgb, "box"), viz.Panel(rgb, "map", colorbar=("low", "high"))])
    noted = viz.compose([viz.Panel(rgb, "box"), viz.Panel(rgb, "map", colorbar=("low", "high"))], note="a pipeline check")
    strip = 18
    assert plain.shape == (strip + 64 + strip, 80 + 8 + 80, 3)
    assert noted.shape == (plain.shape[0] + strip, plain.shape[1], 3)
    assert (plain[:strip, :80] < 100).any()  # the title is written
    bar = plain[strip + 64 : strip + 64 + strip // 2, 88:]
    assert bar[0, 0, 2] > bar[0, 0, 0] and bar[0, -1, 0] > bar[0, -1, 2]  # JET: blue (cold) to red (hot)
    assert (plain[strip + 64 :, :80] == 255).all()  # no colour bar under a picture that is not a map
    note = noted[-strip:]
    assert ((note[..., 0] > 150) & (note[..., 1] < 100)).any()  # red ink
