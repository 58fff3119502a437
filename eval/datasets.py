"""The CorLoc benchmarks as lists of (image, ground-truth boxes): VOC07 / VOC12 trainval and COCO20k.

Protocol (DESIGN.md §4, as in valeoai/LOST ``datasets.py``):

- VOC: every ``<object>`` of ``Annotations/<id>.xml`` for the ids of
  ``ImageSets/Main/trainval.txt``; the box is ``[xmin-1, ymin-1, xmax, ymax]`` (1-based inclusive
  → 0-based with exclusive right/bottom). Difficult and truncated objects are kept. With
  ``no_hard=True`` objects marked truncated or difficult are dropped, and images left with none
  are skipped (LOST's ``--no_hard``).
- COCO20k: the ``train2014`` images named in LOST's ``coco_20k_filenames.txt`` (19,817 lines; the
  image id is the number after the last ``_`` of each name), boxes from
  ``annotations/instances_train2014.json`` without ``iscrowd`` ones, ``[x, y, x+w, y+h]`` each
  rounded with Python's ``round`` (half to even, as the reference's ``int(round(x))``).

Boxes are float64 ``(n, 4)`` arrays ``x1, y1, x2, y2`` in pixels, right/bottom exclusive.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from discovery.weights import sha256_file

#: sha256 of LOST's ``datasets/coco_20k_filenames.txt``.
COCO20K_LIST_SHA256 = "74637e9b4f93f2ebef9b1f664aff53edd1f41ef08dad97bd22ce8e455052b335"
COCO20K_LIST_URL = "https://raw.githubusercontent.com/valeoai/LOST/master/datasets/coco_20k_filenames.txt"
COCO20K_LIST_NAME = "coco_20k_filenames.txt"

#: dataset name → (folder / description, split, image count of the published protocol)
DATASETS = {
    "voc07": ("VOC2007", "trainval", 5011),
    "voc12": ("VOC2012", "trainval", 11540),
    "coco20k": ("COCO train2014", "train2014-20k", 19817),
}

VOC_PARTS = ("JPEGImages/", "Annotations/", "ImageSets/Main/trainval.txt")
COCO_PARTS = ("train2014/", "annotations/instances_train2014.json")


class DatasetError(Exception):
    """A dataset problem a user can fix. The text is one line, except for a wrong root, where
    the lines after the first show the expected tree and what was found."""


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


def _check_root(name: str, root: str | Path) -> Path:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a directory" if root.exists() else f"dataset root {root} does not exist")
    return root


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
    root = _check_root(name, root)
    if name == "coco20k":
        if no_hard:
            raise DatasetError("--no-hard is defined for VOC only (COCO20k drops iscrowd boxes and keeps the rest)")
        return _open_coco20k(root, image_list, skip_bad)
    if image_list is not None:
        raise DatasetError("--image-list applies to coco20k only")
    return _open_voc(name, root, no_hard, skip_bad)


def image_paths(name: str, root: str | Path, image_list: str | Path | None = None) -> list[Path]:
    """The split's image files, from the split / image list alone: no annotation is read.

    For consumers that must not see labels (the PUL trainer). Same root layouts and errors as
    :func:`open_dataset`; files are not checked for existence.
    """
    root = _check_root(name, root)
    if name == "coco20k":
        folder, images_dir, _ = find_coco_folder(root)
        return [images_dir / base for base, _ in read_image_list(_coco20k_list(root, folder, image_list))]
    folder, _, ids = _voc_split(name, root)
    return [folder / "JPEGImages" / f"{image_id}.jpg" for image_id in ids]


# --- VOC ---------------------------------------------------------------------------------------


def _is_voc(folder: Path) -> bool:
    return (
        (folder / "JPEGImages").is_dir()
        and (folder / "Annotations").is_dir()
        and (folder / "ImageSets" / "Main" / "trainval.txt").is_file()
    )


def find_voc_folder(root: Path, year: str) -> Path:
    """The ``VOC<year>`` folder for any accepted layout of ``root``, or a :class:`DatasetError`
    that draws the expected tree and lists what ``root`` holds."""
    wanted = f"VOC{year}"
    candidates = [root / "VOCdevkit" / wanted, root / wanted]
    other_year = re.fullmatch(r"VOC\d{4}", root.name) and root.name != wanted
    if not other_year:
        candidates.append(root)
    for folder in candidates:
        if _is_voc(folder):
            return folder.resolve()
    lines = [
        f"no PASCAL {wanted} trainval under {root}",
        f"expected (ROOT = {root}):",
        f"  ROOT/VOCdevkit/{wanted}/   (or ROOT/{wanted}/ when ROOT is VOCdevkit, or ROOT itself when it is {wanted})",
        "  ├── JPEGImages/<id>.jpg",
        "  ├── Annotations/<id>.xml",
        "  └── ImageSets/Main/trainval.txt",
    ]
    if other_year:
        lines.append(f"{root.name} is another year's folder")
    for folder in candidates:
        if folder.is_dir() and folder != root:
            missing = [p for p in VOC_PARTS if not (folder / p.rstrip("/")).exists()]
            lines.append(f"{folder} exists but lacks {', '.join(missing)}")
    lines.append(f"found in {root}: {_listing(root)}")
    raise DatasetError("\n".join(lines))


def _listing(folder: Path, limit: int = 12) -> str:
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        return f"(cannot list: {err.strerror})"
    names = [e.name + ("/" if e.is_dir() else "") for e in entries[:limit]]
    if not names:
        return "(empty)"
    more = f" (and {len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(names) + more


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


def _voc_split(name: str, root: Path) -> tuple[Path, str, list[str]]:
    """``(VOC folder, split name, image ids)`` from the split file alone."""
    folder_name, split, _ = DATASETS[name]
    folder = find_voc_folder(root, folder_name[3:])
    split_file = folder / "ImageSets" / "Main" / f"{split}.txt"
    try:
        ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read {split_file}: {err}") from None
    if not ids:
        raise DatasetError(f"{split_file} lists no images")
    return folder, split, ids


def _open_voc(name: str, root: Path, no_hard: bool, skip_bad: bool) -> Dataset:
    folder, split, ids = _voc_split(name, root)
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


def _coco_layout(folder: Path) -> tuple[Path, Path] | None:
    annotations = folder / "annotations" / "instances_train2014.json"
    for images in (folder / "train2014", folder / "images" / "train2014"):
        if images.is_dir() and annotations.is_file():
            return images, annotations
    return None


def find_coco_folder(root: Path) -> tuple[Path, Path, Path]:
    """``(coco_folder, train2014_dir, annotation_json)`` for ``root``, or a :class:`DatasetError`
    that draws the expected tree and lists what ``root`` holds."""
    for folder in (root, root / "coco", root / "COCO"):
        found = _coco_layout(folder)
        if found:
            return folder.resolve(), found[0].resolve(), found[1].resolve()
    lines = [
        f"no COCO train2014 under {root}",
        f"expected (ROOT = {root}, or its coco/ or COCO/ folder):",
        "  ROOT/",
        "  ├── train2014/COCO_train2014_<id>.jpg      (or images/train2014/)",
        "  ├── annotations/instances_train2014.json",
        "  └── coco_20k_filenames.txt                 (or --image-list FILE; `python -m eval fetch-coco20k --root ROOT`)",
        f"found in {root}: {_listing(root)}",
    ]
    raise DatasetError("\n".join(lines))


def read_image_list(path: Path) -> list[tuple[str, int]]:
    """LOST's list: one file name per line (optionally with a folder). Returns ``(basename, id)``."""
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read image list {path}: {err}") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        base = line.replace("\\", "/").rsplit("/", 1)[-1]
        try:
            entries.append((base, int(base.rsplit("_", 1)[-1].split(".")[0])))
        except ValueError:
            raise DatasetError(f"malformed image list {path}: line {number} {line!r} is not a COCO file name") from None
    if not entries:
        raise DatasetError(f"image list {path} is empty")
    return entries


def coco_box(bbox) -> tuple[int, int, int, int]:
    """COCO ``[x, y, w, h]`` → ``(x, y, x+w, y+h)``, each rounded like the reference's ``int(round(v))``."""
    x, y, w, h = (float(v) for v in bbox)
    return tuple(int(round(v)) for v in (x, y, x + w, y + h))


def _coco20k_list(root: Path, folder: Path, image_list: str | Path | None) -> Path:
    """The COCO20k list file: ``image_list``, else ``coco_20k_filenames.txt`` in the COCO folder or root."""
    if image_list is None:
        for candidate in (folder / COCO20K_LIST_NAME, root / COCO20K_LIST_NAME):
            if candidate.is_file():
                return candidate
        raise DatasetError(
            f"COCO20k needs LOST's image list {COCO20K_LIST_NAME}: run `python -m eval fetch-coco20k --root {root}` "
            "or pass --image-list FILE"
        )
    image_list = Path(image_list).expanduser()
    if not image_list.is_file():
        raise DatasetError(f"image list {image_list} does not exist")
    return image_list


def _open_coco20k(root: Path, image_list: str | Path | None, skip_bad: bool) -> Dataset:
    folder, images_dir, ann_file = find_coco_folder(root)
    image_list = _coco20k_list(root, folder, image_list)
    entries = read_image_list(image_list)
    try:
        with open(ann_file) as fh:
            coco = json.load(fh)
        images = {int(img["id"]): img for img in coco["images"]}
        annotations = coco["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        reason = f"missing key {err}" if isinstance(err, KeyError) else str(err).splitlines()[0]
        raise DatasetError(f"malformed annotation {ann_file}: {reason}") from None
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in annotations:
        try:
            by_image[int(ann["image_id"])].append(ann)
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"malformed annotation {ann_file}: an annotation without a valid image_id") from None
    items, skipped = [], []
    for base, image_id in entries:
        try:
            info = images.get(image_id)
            if info is None:
                raise DatasetError(f"image {base} of {image_list.name} is not in {ann_file}")
            boxes = []
            for ann in by_image.get(image_id, []):
                if ann.get("iscrowd", 0) == 1:
                    continue
                bbox = ann.get("bbox")
                if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                    raise DatasetError(f"malformed annotation {ann_file}: annotation {ann.get('id')} has bbox {bbox!r}")
                try:
                    boxes.append(coco_box(bbox))
                except (TypeError, ValueError):
                    raise DatasetError(f"malformed annotation {ann_file}: annotation {ann.get('id')} has bbox {bbox!r}") from None
            path = images_dir / str(info.get("file_name", base))
            if not path.is_file():
                raise DatasetError(f"missing image {path}")
        except DatasetError as err:
            if not skip_bad:
                raise DatasetError(f"{err} (use --skip-bad to leave such images out)") from None
            skipped.append((base, str(err)))
            continue
        items.append(Item(str(image_id), path, np.asarray(boxes, dtype=np.float64).reshape(-1, 4)))
    return Dataset(
        "coco20k", DATASETS["coco20k"][1], folder, items, False, 0, tuple(skipped),
        image_list.resolve(), sha256_file(image_list),
    )
