"""ImageGeometry on synthetic values: both ways between frames, clipping, cells, map extent, flips."""

from __future__ import annotations

import pytest
import torch

from discovery.geometry import ImageGeometry, hflip_boxes, padded_size

# a 300x200 original shrunk to 64x43 for the network, padded to 64x48 at stride 16
SHRUNK = ImageGeometry.at_stride((64, 43), 16, original_size=(300, 200))


def test_at_stride_pads_and_scales():
    assert SHRUNK.padded_size == (64, 48) and SHRUNK.grid == (4, 3)
    assert SHRUNK.scale == (300 / 64, 200 / 43)
    native = ImageGeometry.at_stride((17, 32), 8)
    assert native.original_size == native.size == (17, 32) and native.padded_size == (24, 32)
    assert native.scale == (1.0, 1.0)


@pytest.mark.parametrize(
    ("size", "stride", "expected"),
    [((375, 500), 16, (384, 512)), ((1, 1), 16, (16, 16)), ((64, 65), 32, (64, 96)), ((17, 32), 8, (24, 32))],
)
def test_padded_size(size, stride, expected):
    assert padded_size(size, stride) == expected


def test_boxes_and_points_round_trip():
    box = (3.0, 5.5, 40.0, 63.0)
    there = SHRUNK.box_to_original(box)
    sy, sx = SHRUNK.scale
    assert there == (3.0 * sx, 5.5 * sy, 40.0 * sx, 63.0 * sy)
    assert SHRUNK.box_to_resized(there) == pytest.approx(box, rel=1e-12)
    assert SHRUNK.point_to_resized(SHRUNK.point_to_original((7.0, 9.0))) == pytest.approx((7.0, 9.0), rel=1e-12)
    assert SHRUNK.point_to_original((43.0, 64.0)) == pytest.approx((200.0, 300.0))
    same = ImageGeometry.at_stride((10, 20))
    assert same.box_to_original(box) == box and same.box_to_resized(box) == box


def test_clip_to_the_original_image():
    assert SHRUNK.clip((-4.0, 10.0, 250.0, 301.0)) == (0.0, 10.0, 200.0, 300.0)
    assert SHRUNK.clip((1.5, 2.5, 3.5, 4.5)) == (1.5, 2.5, 3.5, 4.5)
    boxes = torch.tensor([[0.0, 0.0, 43.0, 64.0], [10.0, 20.0, 50.0, 70.0]])
    mapped = SHRUNK.boxes_to_original(boxes)
    assert mapped.dtype == boxes.dtype
    torch.testing.assert_close(mapped[0], torch.tensor([0.0, 0.0, 200.0, 300.0]))
    torch.testing.assert_close(mapped[1], torch.tensor([10 * 200 / 43, 20 * 300 / 64, 200.0, 300.0]))
    one_by_one = [SHRUNK.clip(SHRUNK.box_to_original(tuple(b))) for b in boxes.tolist()]
    torch.testing.assert_close(mapped, torch.tensor(one_by_one))


def test_cells_and_pixels():
    # the last column of cells reaches into the padding: clipped to the 43 image columns
    assert SHRUNK.cells_to_box((1, 1), (3, 2)) == (16.0, 16.0, 43.0, 64.0)
    assert SHRUNK.cells_to_box((0, 0), (0, 0)) == (0.0, 0.0, 16.0, 16.0)
    assert SHRUNK.cell_of((15.9, 16.0)) == (1, 0) and SHRUNK.cell_of((42.0, 63.0)) == (3, 2)
    for cell in ((0, 0), (2, 1), (3, 2)):
        x1, y1, x2, y2 = SHRUNK.cells_to_box(cell, cell)
        assert SHRUNK.cell_of((x1, y1)) == cell and SHRUNK.cell_of((x2 - 0.5, y2 - 0.5)) == cell


def test_cell_centre_in_original_pixels():
    # cell (1, 2) spans columns 32..43 (clipped) and rows 16..32 of the network's image
    assert SHRUNK.cell_centre((1, 2)) == pytest.approx(((32 + 43) / 2 * 200 / 43, (16 + 32) / 2 * 300 / 64))
    native = ImageGeometry.at_stride((160, 192), 16)
    assert native.cell_centre((0, 0)) == (8.0, 8.0) and native.cell_centre((9, 11)) == (184.0, 152.0)


def test_map_extent_covers_the_padded_input_and_at_least_the_image():
    assert SHRUNK.map_extent(SHRUNK.grid) == (64, 48)
    assert ImageGeometry.at_stride((72, 100), 8).map_extent((9, 13)) == (72, 104)
    assert ImageGeometry(original_size=(5, 7), size=(5, 7), padded_size=(4, 6), stride=2).map_extent((2, 3)) == (5, 7)


def test_hflip_twice_is_identity():
    boxes = torch.tensor([[0.0, 1.0, 10.0, 5.0], [12.5, 3.0, 40.0, 9.0]])
    flipped = hflip_boxes(boxes, 40)
    torch.testing.assert_close(flipped, torch.tensor([[30.0, 1.0, 40.0, 5.0], [0.0, 3.0, 27.5, 9.0]]))
    assert (flipped[:, 0] < flipped[:, 2]).all()
    assert torch.equal(hflip_boxes(flipped, 40), boxes)
