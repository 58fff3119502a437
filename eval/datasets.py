"""The CorLoc benchmarks as lists of (image, ground-truth boxes): VOC07 / VOC12 trainval and COCO20k.

Protocol (docs/protocol.md, as in valeoai/LOST ``datasets.py``); where the images are (layouts,
split files, the COCO20k list) is :mod:`discovery.splits`, shared with the PUL trainer:

- VOC: every ``<object>`` of ``Annotations/<id>.xml`` for the ids of
  ``ImageSets/Main/trainval.txt``; the box is ``[xmin-1, ymin-1, xmax, ymax]`` (1-based inclusive
  → 0-based with exclusive right/bottom). Difficult and truncated objects are kept. With
  ``no_hard=True`` objects marked truncated or difficult are dropped, and images left with none
  are skipped (LOST's ``--no_hard``).
- COCO20k: the ``train2014`` images named in LOST's ``coco_20k_filenames.txt`` (19,817 lines; the
  image id is the number after the last ``_`` of each name), boxes from
  ``annotations/instances_train2014.json`` (indexed by pycocotools) without ``iscrowd`` ones, ``[x, y, x+w, y+h]`` each
  rounded with Python's ``round`` (half to even, as the reference's ``int(round(x))``).

Boxes are float64 ``(n, 4)`` arrays ``x1, y1, x2, y2`` in pixels, right/bottom exclusive.
"""

from __future__ import annotations

import contextlib
import io
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from discovery.splits import (  # noqa: F401  (re-exported: the harness's names for the split layer)
    COCO20K_LIST_NAME,
    COCO20K_LIST_SHA256,
    COCO20K_LIST_URL,
    DATASETS,
    DatasetError,
    check_root,
    coco20k_list,
    find_coco_folder,
    find_voc_folder,
    image_paths,
    read_image_list,
    voc_split,
)
from discovery.weights import sha256_file


@dataclass(frozen=True, eq=False)
class Item:
    """One evaluated image.

    Attributes:
        image_id: VOC file stem (``"000005"``, ``"2008_000002"``) or the COCO image id as text.
        path: the image file.
        boxes: float64 ``(n, 4)`` ground truth, ``x1, y1, x2, y2`` pixels, right/bottom exclusive
            (``n`` may be 0: such an image can only be a miss).
    """

    image_id: str
    path: Path
    boxes: np.ndarray


@dataclass(frozen=True, eq=False)
class Dataset:
    """An opened benchmark.

    Attributes:
        name: ``voc07`` / ``voc12`` / ``coco20k``; split: ``trainval`` or ``train2014-20k``.
        root: the folder the files were read from (after layout resolution).
        items: the images to evaluate, in the split file's order.
        no_hard: whether truncated/difficult objects were dropped.
        dropped_no_gt: images skipped by ``no_hard`` because no object was left.
        skipped: ``(image id or file name, reason)`` for every image left out by ``skip_bad``.
        image_list: the COCO20k list file used (``None`` for VOC); image_list_sha256 its hash.
    """

    name: str
    split: str
    root: Path
    items: list[Item]
    no_hard: bool = False
    dropped_no_gt: int = 0
    skipped: tuple[tuple[str, str], ...] = ()
    image_list: Path | None = None
    image_list_sha256: str | None = None

    @property
    def expected_count(self) -> int:
        """Images in the published protocol's denominator (before ``no_hard``)."""
        return DATASETS[self.name][2]

    @property
    def official_list(self) -> bool:
        """For COCO20k: whether the image list is LOST's file (True for VOC)."""
        return self.image_list_sha256 is None or self.image_list_sha256 == COCO20K_LIST_SHA256

    def __len__(self) -> int:
        return len(self.items)


def open_dataset(
    name: str,
    root: str | Path,
    no_hard: bool = False,
    image_list: str | Path | None = None,
    skip_bad: bool = False,
) -> Dataset:
    """Open a benchmark under ``root``.

    Args:
        name: ``voc07``, ``voc12`` or ``coco20k``.
        root: VOC: a folder holding ``VOCdevkit/VOC2007``, the ``VOCdevkit`` folder, or ``VOC2007``
            itself. COCO: a folder holding ``train2014/`` (or ``images/train2014/``) and
            ``annotations/instances_train2014.json``, or its parent with a ``coco``/``COCO`` folder.
        no_hard: VOC only: drop truncated/difficult objects, skip images left with none.
        image_list: COCO20k only: the 19,817-name list (default: ``coco_20k_filenames.txt`` in the
            COCO folder or in ``root``).
        skip_bad: leave out images whose annotation or image file is missing or malformed (they are
            listed in ``Dataset.skipped``) instead of raising.

    Raises:
        DatasetError: unknown name, wrong root (with the expected tree), missing or malformed files.
    """
    root = check_root(name, root)
    if name == "coco20k":
        if no_hard:
            raise DatasetError("--no-hard is defined for VOC only (COCO20k drops iscrowd boxes and keeps the rest)")
        return _open_coco20k(root, image_list, skip_bad)
    if image_list is not None:
        raise DatasetError("--image-list applies to coco20k only")
    return _open_voc(name, root, no_hard, skip_bad)


# --- VOC ---------------------------------------------------------------------------------------


def _flag(obj: ET.Element, tag: str) -> bool:
    return (obj.findtext(tag) or "0").strip() == "1"


def parse_voc_annotation(path: Path, no_hard: bool = False) -> np.ndarray:
    """Ground-truth boxes of one VOC XML file: float64 ``(n, 4)`` ``[xmin-1, ymin-1, xmax, ymax]``.

    With ``no_hard``, objects marked truncated or difficult are left out.
    Raises :class:`DatasetError` naming the file when it is missing or malformed.
    """
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise DatasetError(f"missing annotation {path}") from None
    except ET.ParseError as err:
        raise DatasetError(f"malformed annotation {path}: {err}") from None
    except OSError as err:
        raise DatasetError(f"cannot read annotation {path}: {err.strerror}") from None
    boxes = []
    for number, obj in enumerate(tree.getroot().iter("object"), start=1):
        if no_hard and (_flag(obj, "truncated") or _flag(obj, "difficult")):
            continue
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DatasetError(f"malformed annotation {path}: object {number} has no <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float(bndbox.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise DatasetError(f"malformed annotation {path}: object {number} has a missing or non-numeric bndbox coordinate") from None
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _open_voc(name: str, root: Path, no_hard: bool, skip_bad: bool) -> Dataset:
    folder, split, ids = voc_split(name, root)
    items, skipped, dropped = [], [], 0
    for image_id in ids:
        image = folder / "JPEGImages" / f"{image_id}.jpg"
        try:
            boxes = parse_voc_annotation(folder / "Annotations" / f"{image_id}.xml", no_hard)
            if not image.is_file():
                raise DatasetError(f"missing image {image}")
        except DatasetError as err:
            if not skip_bad:
                raise DatasetError(f"{err} (use --skip-bad to leave such images out)") from None
            skipped.append((image_id, str(err)))
            continue
        if no_hard and len(boxes) == 0:
            dropped += 1
            continue
        items.append(Item(image_id, image, boxes))
    return Dataset(name, split, folder, items, no_hard, dropped, tuple(skipped))


# --- COCO20k -----------------------------------------------------------------------------------


def coco_box(bbox) -> tuple[int, int, int, int]:
    """COCO ``[x, y, w, h]`` → ``(x, y, x+w, y+h)``, each rounded like the reference's ``int(round(v))``."""
    x, y, w, h = (float(v) for v in bbox)
    return tuple(int(round(v)) for v in (x, y, x + w, y + h))


def load_coco(ann_file: Path):
    """pycocotools' ``COCO`` index of an instances JSON (its progress prints silenced).

    Raises :class:`DatasetError` naming the file when it is unreadable or lacks ``images`` /
    ``annotations`` lists of objects with ``id`` / ``image_id``.
    """
    from pycocotools.coco import COCO

    try:
        with open(ann_file) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:
        raise DatasetError(f"malformed annotation {ann_file}: {str(err).splitlines()[0]}") from None
    missing = [key for key in ("images", "annotations") if not isinstance(data, dict) or not isinstance(data.get(key), list)]
    if missing:
        raise DatasetError(f"malformed annotation {ann_file}: missing key {missing[0]!r}")
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError) as err:
        what = "an annotation without a valid image_id" if "image_id" in str(err) else f"missing key {err}"
        raise DatasetError(f"malformed annotation {ann_file}: {what}") from None
    return coco


def _coco_boxes(coco, image_id: int, ann_file: Path) -> np.ndarray:
    boxes = []
    for ann in coco.imgToAnns.get(image_id, []):
        if ann.get("iscrowd", 0) == 1:
            continue
        bbox = ann.get("bbox")
        try:
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise ValueError
            boxes.append(coco_box(bbox))
        except (TypeError, ValueError):
            raise DatasetError(f"malformed annotation {ann_file}: annotation {ann.get('id')} has bbox {bbox!r}") from None
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _open_coco20k(root: Path, image_list: str | Path | None, skip_bad: bool) -> Dataset:
    folder, images_dir, ann_file = find_coco_folder(root)
    image_list = coco20k_list(root, folder, image_list)
    entries = read_image_list(image_list)
    coco = load_coco(ann_file)
    items, skipped = [], []
    for base, image_id in entries:
        try:
            info = coco.imgs.get(image_id)
            if info is None:
                raise DatasetError(f"image {base} of {image_list.name} is not in {ann_file}")
            boxes = _coco_boxes(coco, image_id, ann_file)
            path = images_dir / str(info.get("file_name", base))
            if not path.is_file():
                raise DatasetError(f"missing image {path}")
        except DatasetError as err:
            if not skip_bad:
                raise DatasetError(f"{err} (use --skip-bad to leave such images out)") from None
            skipped.append((base, str(err)))
            continue
        items.append(Item(str(image_id), path, boxes))
    return Dataset(
        "coco20k", DATASETS["coco20k"][1], folder, items, False, 0, tuple(skipped),
        image_list.resolve(), sha256_file(image_list),
    )
