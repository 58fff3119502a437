"""`eval synth`: a small synthetic benchmark in the VOC and the COCO layouts, with known boxes.

Each image is a textured background with one to three flat-coloured, noisy shapes (rectangles and
ellipses). Sizes vary (64-200 px) and repeat, and some differ but pad to the same multiple of 16, so
shape bucketing is exercised. Some objects are marked difficult, some run off the frame (truncated,
box clipped), one image has only hard objects (``--no-hard`` drops it), and in COCO some images get
an extra ``iscrowd`` box and fractional ``bbox`` values (the rounding rule).

Layout written under ``OUT``::

    VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets/Main/trainval.txt}
    VOCdevkit/VOC2012/{...}                         (ids like 2008_000001)
    coco/train2014/COCO_train2014_<id:012>.jpg
    coco/annotations/instances_train2014.json
    coco/coco_20k_filenames.txt                     (all images but the last: the list filters)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

# (H, W); (100, 150) pads to (112, 160) like (112, 160) itself, (75, 130) to (80, 144).
SIZES = ((96, 128), (128, 96), (112, 160), (100, 150), (64, 200), (160, 112), (96, 128), (75, 130), (144, 176), (200, 144))
CLASSES = ("square", "disc", "bar")


@dataclass(frozen=True)
class SynthObject:
    """``box`` ``(x1, y1, x2, y2)`` int pixels, right/bottom exclusive, clipped to the image."""

    name: str
    box: tuple[int, int, int, int]
    difficult: bool
    truncated: bool


@dataclass(frozen=True)
class SynthImage:
    index: int
    rgb: np.ndarray
    objects: tuple[SynthObject, ...]


@dataclass(frozen=True)
class SynthSummary:
    """Where things went and how many."""

    out: Path
    voc_root: Path
    coco_root: Path
    image_list: Path
    images: int


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    field = np.zeros((height, width))
    for _ in range(3):
        fx, fy = rng.uniform(0.05, 0.4, size=2)
        field += np.sin(xx * fx + rng.uniform(0, 6)) * np.cos(yy * fy + rng.uniform(0, 6))
    tint = rng.uniform(40, 110, size=3)
    img = tint + 25 * field[..., None] + rng.normal(0, 8, size=(height, width, 3))
    return img


def make_image(rng: np.random.Generator, index: int, size: tuple[int, int], all_hard: bool = False) -> SynthImage:
    """One synthetic image with 1-3 shapes; ``all_hard`` marks every object difficult."""
    height, width = size
    img = _background(rng, height, width)
    objects = []
    for number in range(int(rng.integers(1, 4))):
        if number == 0:  # a dominant object, as in most benchmark images
            bw, bh = int(rng.integers(width // 2, width * 9 // 10)), int(rng.integers(height // 2, height * 9 // 10))
        else:
            bw = int(rng.integers(max(12, width // 5), max(13, width // 2)))
            bh = int(rng.integers(max(12, height // 5), max(13, height // 2)))
        truncated = number > 0 and rng.random() < 0.3
        if truncated:  # let the shape run off the right or bottom edge
            x1, y1 = width - bw // 2, int(rng.integers(0, height - bh))
            if rng.random() < 0.5:
                x1, y1 = int(rng.integers(0, width - bw)), height - bh // 2
        else:
            x1, y1 = int(rng.integers(0, width - bw)), int(rng.integers(0, height - bh))
        x2, y2 = min(x1 + bw, width), min(y1 + bh, height)
        kind = CLASSES[int(rng.integers(0, len(CLASSES)))]
        colour = rng.uniform(150, 255, size=3)
        yy, xx = np.mgrid[y1:y2, x1:x2]
        if kind == "disc":
            cy, cx = y1 + bh / 2 - 0.5, x1 + bw / 2 - 0.5
            inside = ((yy - cy) / (bh / 2)) ** 2 + ((xx - cx) / (bw / 2)) ** 2 <= 1.0
        else:
            inside = np.ones(yy.shape, dtype=bool)
        patch = img[y1:y2, x1:x2]
        patch[inside] = colour + rng.normal(0, 12, size=(int(inside.sum()), 3))
        # the box is the drawn pixels' extent (an ellipse's extreme rows may be empty)
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        box = (x1 + int(cols[0]), y1 + int(rows[0]), x1 + int(cols[-1]) + 1, y1 + int(rows[-1]) + 1)
        difficult = all_hard or rng.random() < 0.15
        objects.append(SynthObject(kind, box, bool(difficult), bool(truncated)))
    rgb = np.clip(img, 0, 255).round().astype(np.uint8)
    return SynthImage(index, rgb, tuple(objects))


def _voc_xml(image_id: str, folder: str, image: SynthImage) -> str:
    height, width = image.rgb.shape[:2]
    parts = [
        "<annotation>",
        f"  <folder>{folder}</folder>",
        f"  <filename>{image_id}.jpg</filename>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for obj in image.objects:
        x1, y1, x2, y2 = obj.box
        parts += [
            "  <object>",
            f"    <name>{escape(obj.name)}</name>",
            f"    <truncated>{int(obj.truncated)}</truncated>",
            f"    <difficult>{int(obj.difficult)}</difficult>",
            # VOC stores 1-based inclusive pixel indices: [x1, x2) becomes xmin=x1+1, xmax=x2
            f"    <bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def synthetic_images(n: int, seed: int) -> list[SynthImage]:
    """The ``n`` images (pixels and boxes) of one synthetic set; image 1 has only difficult objects."""
    rng = np.random.default_rng(seed)
    return [make_image(rng, i, SIZES[i % len(SIZES)], all_hard=(i == 1)) for i in range(n)]


def write_voc(folder: Path, ids: list[str], images: list[SynthImage]) -> None:
    """A VOC ``VOC<year>`` folder with a trainval split of ``ids``."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for image_id, image in zip(ids, images):
        Image.fromarray(image.rgb).save(folder / "JPEGImages" / f"{image_id}.jpg", quality=95)
        (folder / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, folder.name, image))
    (folder / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in ids))


def write_coco(folder: Path, images: list[SynthImage], seed: int) -> Path:
    """A COCO train2014 folder with instances JSON and a 20k-style list; returns the list's path."""
    rng = np.random.default_rng(seed + 1000)
    (folder / "train2014").mkdir(parents=True, exist_ok=True)
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    ids = sorted(int(v) for v in rng.choice(np.arange(1, 600_000), size=len(images), replace=False))
    coco = {
        "info": {"description": "synthetic COCO-layout benchmark made by `python -m eval synth`"},
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)],
    }
    names = []
    for image_id, image in zip(ids, images):
        name = f"COCO_train2014_{image_id:012d}.jpg"
        names.append(name)
        Image.fromarray(image.rgb).save(folder / "train2014" / name, quality=95)
        height, width = image.rgb.shape[:2]
        coco["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
        for obj in image.objects:
            x1, y1, x2, y2 = obj.box
            shift = float(rng.choice([0.0, 0.25, 0.5, -0.5]))  # fractional coordinates exercise rounding
            bbox = [x1 + shift, y1, x2 - x1, (y2 - y1) + 0.5 * (shift != 0)]
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": CLASSES.index(obj.name) + 1,
                "bbox": bbox, "area": float(bbox[2] * bbox[3]), "iscrowd": 0,
            })
        if image.index % 4 == 2:  # a crowd region over most of the image: must be ignored
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                "bbox": [0.0, 0.0, float(width), float(height)], "area": float(width * height), "iscrowd": 1,
            })
    (folder / "annotations" / "instances_train2014.json").write_text(json.dumps(coco))
    image_list = folder / "coco_20k_filenames.txt"
    listed = names[:-1] if len(names) > 1 else names
    image_list.write_text("".join(f"train2014/{n}\n" for n in listed))
    return image_list


def make_synthetic(out: str | Path, n: int = 24, seed: int = 0, overwrite: bool = False) -> SynthSummary:
    """Write ``n`` images per dataset (VOC2007, VOC2012, COCO) under ``out``; deterministic in ``seed``.

    Refuses (``FileExistsError``) a folder that already holds ``VOCdevkit/`` or ``coco/`` unless
    ``overwrite``: pointed at a real dataset root it would replace split files and annotations.
    """
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    taken = [name for name in ("VOCdevkit", "coco") if (out / name).exists()]
    if taken and not overwrite:
        raise FileExistsError(
            f"--out {out} already holds {' and '.join(taken)}/ (a real dataset?); choose another folder or pass --overwrite"
        )
    devkit = out / "VOCdevkit"
    voc07 = synthetic_images(n, seed)
    write_voc(devkit / "VOC2007", [f"{i + 1:06d}" for i in range(n)], voc07)
    write_voc(devkit / "VOC2012", [f"2008_{i + 1:06d}" for i in range(n)], synthetic_images(n, seed + 1))
    image_list = write_coco(out / "coco", synthetic_images(n, seed + 2), seed)
    return SynthSummary(out, devkit, out / "coco", image_list, n)
