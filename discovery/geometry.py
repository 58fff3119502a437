"""One image's coordinate frames and the maps between them.

Four frames: the ORIGINAL image ``(H0, W0)``; the RESIZED image the network sees ``(H, W)`` (the
original, shrunk to a maximum side or not); the PADDED input ``(Hp, Wp)`` (zero-padded bottom/right
to a multiple of the stride); the feature GRID ``(Hp / stride, Wp / stride)``. Boxes are
``(x1, y1, x2, y2)`` float pixels, right/bottom exclusive; points are ``(x, y)``; cells are
``(row, col)``. :class:`ImageGeometry` owns every map, both ways (as segment-anything's
``ResizeLongestSide`` owns its transform), so the localizer, LOST, the explainer, the detector and
the overlays cannot disagree on a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Box = tuple[float, float, float, float]
Point = tuple[float, float]
Cell = tuple[int, int]


def padded_size(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Size after zero-padding bottom/right to a multiple of ``stride`` (16 for LOST's setting).

    A multiple of the stride makes the feature map exactly padded size / stride, and every
    feature cell starts inside the image (padding to 16 at stride 8 would leave whole cells of
    padding, where a seed would give a box outside the image).
    """
    height, width = image_size
    return (-(-height // stride) * stride, -(-width // stride) * stride)


@dataclass(frozen=True)
class ImageGeometry:
    """The frames of one image (see the module's docstring).

    Attributes:
        original_size: ``(H0, W0)`` of the user's image.
        size: ``(H, W)`` of the resized image (equal to ``original_size`` when not shrunk).
        padded_size: ``(Hp, Wp)`` of the network's input.
        stride: pixels of the resized image per grid cell.
    """

    original_size: tuple[int, int]
    size: tuple[int, int]
    padded_size: tuple[int, int]
    stride: int = 1

    @classmethod
    def at_stride(
        cls, size: tuple[int, int], stride: int = 1, original_size: tuple[int, int] | None = None
    ) -> ImageGeometry:
        """The geometry of an image of ``size`` padded to a multiple of ``stride`` (stride 1: no
        padding, e.g. a displayed image against the original); ``original_size`` defaults to ``size``."""
        size = (int(size[0]), int(size[1]))
        original = size if original_size is None else (int(original_size[0]), int(original_size[1]))
        return cls(original, size, padded_size(size, stride), stride)

    @property
    def scale(self) -> tuple[float, float]:
        """``(sy, sx)``: resized pixels times these are original pixels."""
        return (self.original_size[0] / self.size[0], self.original_size[1] / self.size[1])

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w)`` cells of the feature map over the padded input."""
        return (self.padded_size[0] // self.stride, self.padded_size[1] // self.stride)

    # original <-> resized

    def box_to_original(self, box: Box) -> Box:
        """A resized-pixel box in original pixels (not clipped: see :meth:`clip`)."""
        sy, sx = self.scale
        x1, y1, x2, y2 = box
        return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)

    def box_to_resized(self, box: Box) -> Box:
        """An original-pixel box in resized pixels."""
        x1, y1 = self.point_to_resized(box[:2])
        x2, y2 = self.point_to_resized(box[2:])
        return (x1, y1, x2, y2)

    def point_to_original(self, point: Point) -> Point:
        sy, sx = self.scale
        return (point[0] * sx, point[1] * sy)

    def point_to_resized(self, point: Point) -> Point:
        # multiply by the inverse ratio (not divide by scale): the overlays have always rounded
        # x * (W / W0), and a division can land on the other side of a .5
        return (point[0] * (self.size[1] / self.original_size[1]), point[1] * (self.size[0] / self.original_size[0]))

    def clip(self, box: Box) -> Box:
        """``box`` (original pixels) clipped to the original image."""
        height, width = self.original_size
        x1, y1, x2, y2 = box
        return (
            float(min(max(x1, 0), width)), float(min(max(y1, 0), height)),
            float(min(max(x2, 0), width)), float(min(max(y2, 0), height)),
        )

    def boxes_to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(N, 4)`` resized-pixel boxes → original pixels, clipped to the original image, in
        ``boxes``' dtype (the vectorised :meth:`box_to_original` then :meth:`clip`)."""
        sy, sx = self.scale
        out = boxes * torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)
        height, width = self.original_size
        out[:, 0::2] = out[:, 0::2].clamp(0, width)
        out[:, 1::2] = out[:, 1::2].clamp(0, height)
        return out

    # resized pixels <-> grid cells

    def cells_to_box(self, first: Cell, last: Cell) -> Box:
        """The resized-pixel box covering the cells from ``first`` to ``last`` (inclusive, ``(row,
        col)``), clipped to the resized image (the last row/column of cells may reach into the padding)."""
        height, width = self.size
        s = self.stride
        return (
            float(first[1] * s), float(first[0] * s),
            float(min((last[1] + 1) * s, width)), float(min((last[0] + 1) * s, height)),
        )

    def cell_of(self, point: Point) -> Cell:
        """The ``(row, col)`` of the cell holding a resized-pixel point."""
        return (int(point[1] // self.stride), int(point[0] // self.stride))

    def cell_centre(self, cell: Cell) -> Point:
        """The centre of ``cell``'s part inside the image, in original pixels."""
        x1, y1, x2, y2 = self.cells_to_box(cell, cell)
        return self.point_to_original(((x1 + x2) / 2, (y1 + y2) / 2))

    def map_extent(self, grid: tuple[int, int]) -> tuple[int, int]:
        """``(height, width)`` in resized pixels that an ``(h, w)`` map over the padded input spans
        (at least the image): upsample the map to this, then crop to :attr:`size`."""
        cell_y, cell_x = self.padded_size[0] / grid[0], self.padded_size[1] / grid[1]
        return (max(self.size[0], round(grid[0] * cell_y)), max(self.size[1], round(grid[1] * cell_x)))


def hflip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """``(N, 4)`` boxes of an image ``width`` pixels wide, mirrored left-right (exclusive edges:
    ``x1' = width - x2``, ``x2' = width - x1``); flipping twice gives the boxes back."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
