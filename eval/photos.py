"""A small real-photo benchmark with boxes: photos that ship inside installed packages, boxed by hand.

The photos are never copied into the project: they are read at run time from scikit-image
(``skimage.data``: always installed), scikit-learn's two sample images and matplotlib's sample data
(each used when its package is importable). Only the boxes are ours, in ``photos.csv`` next to this
module: one box per photo, ``x1, y1, x2, y2`` pixels, 0-based, right/bottom exclusive. The rule:
**a tight box around the single most salient whole object** (what a person would name first:
the cat, the cup with its saucer, the person, the rocket without its tower...), the whole visible
extent of that one object, VOC convention (no difficult flag; a box that touches the frame is
marked truncated). :func:`write_photos` writes them in the VOC layout ``eval run --dataset voc07``
reads (``VOCdevkit/VOC2007``, ids = the photo names), with :mod:`eval.synth`'s writer.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .synth import SynthImage, SynthObject, write_voc

BOXES = Path(__file__).with_name("photos.csv")
#: held-out photos (no box, not in the set): scikit-image's other natural pictures
HELD_OUT = ("camera", "coins", "moon", "grass", "gravel", "brick", "hubble_deep_field", "immunohistochemistry", "retina")


@dataclass(frozen=True)
class Photo:
    """One photo of the set: ``rgb`` ``(H, W, 3)`` uint8 and its one ``box`` (exclusive right/bottom)."""

    name: str
    source: str
    rgb: np.ndarray
    box: tuple[int, int, int, int]
    label: str


@dataclass(frozen=True)
class PhotoSet:
    """What :func:`write_photos` wrote: the root for ``--dataset voc07 --root``, the photos used and
    the ``missing`` ones (their package is not installed)."""

    root: Path
    names: tuple[str, ...]
    missing: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)


def _read(source: str, item: str) -> np.ndarray | None:
    """The photo ``item`` of package ``source`` as RGB uint8, ``None`` when the package is missing."""
    try:
        if source == "skimage":
            from skimage import data

            array = getattr(data, item)()
            array = array[0] if isinstance(array, tuple) else array  # stereo pairs: the left view
            return np.asarray(Image.fromarray(array).convert("RGB"))
        if source == "sklearn":
            from sklearn.datasets import load_sample_image

            return np.asarray(load_sample_image(item))
        if source == "matplotlib":
            from matplotlib import cbook

            with cbook.get_sample_data(item) as fh:
                image = Image.open(fh)
                if image.mode in ("RGBA", "LA", "P"):  # composite on white, as discovery.images does
                    image = image.convert("RGBA")
                    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
                    image = Image.alpha_composite(white, image)
                return np.asarray(image.convert("RGB"))
    except ImportError:
        return None
    raise ValueError(f"{BOXES}: unknown photo source {source!r}")


def photos(boxes: Path = BOXES) -> tuple[list[Photo], list[str]]:
    """The photos of ``boxes`` whose package is installed, and the names of the missing ones."""
    found, missing = [], []
    with open(boxes, newline="") as fh:
        for row in csv.DictReader(fh):
            rgb = _read(row["source"], row["item"])
            if rgb is None:
                missing.append(row["name"])
                continue
            box = tuple(int(row[k]) for k in ("x1", "y1", "x2", "y2"))
            height, width = rgb.shape[:2]
            if not (0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height):
                raise ValueError(f"{boxes}: box of {row['name']} {box} is not inside its {width}x{height} photo")
            found.append(Photo(row["name"], row["source"], rgb, box, row["object"]))
    return found, missing


def held_out() -> list[tuple[str, np.ndarray]]:
    """``(name, rgb)`` of :data:`HELD_OUT` (scikit-image, always installed): photos outside the set."""
    return [(name, _read("skimage", name)) for name in HELD_OUT]


def write_photos(root: str | Path, overwrite: bool = False) -> PhotoSet:
    """Write the set under ``root`` as ``VOCdevkit/VOC2007`` (JPEG quality 95, trainval = all).

    Refuses (``FileExistsError``) a root that already holds ``VOCdevkit/`` unless ``overwrite``.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"--root {root} exists and is not a directory")
    if (root / "VOCdevkit").exists() and not overwrite:
        raise FileExistsError(f"--root {root} already holds VOCdevkit/; choose another folder or pass --overwrite")
    found, missing = photos()
    images = []
    for i, photo in enumerate(found):
        height, width = photo.rgb.shape[:2]
        x1, y1, x2, y2 = photo.box
        truncated = x1 == 0 or y1 == 0 or x2 == width or y2 == height
        images.append(SynthImage(i, photo.rgb, (SynthObject(photo.label, photo.box, False, truncated),)))
    write_voc(root / "VOCdevkit" / "VOC2007", [p.name for p in found], images)
    return PhotoSet(root, tuple(p.name for p in found), tuple(missing))
