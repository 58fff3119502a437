"""Where a benchmark split's images are: folder layouts, split files and LOST's COCO20k list.

Read from split files and image lists alone — no annotation — so the PUL trainer (which must never
see labels) and the CorLoc harness (:mod:`discovery.eval.datasets`, which adds the ground truth)
share one definition of each split. Accepted layouts and the protocol are in docs/protocol.md.
"""

from __future__ import annotations

import re
from pathlib import Path

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


def check_root(name: str, root: str | Path) -> Path:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a directory" if root.exists() else f"dataset root {root} does not exist")
    return root


def image_paths(name: str, root: str | Path, image_list: str | Path | None = None) -> list[Path]:
    """The split's image files, from the split / image list alone: no annotation is read.

    For consumers that must not see labels (the PUL trainer). Same root layouts and errors as
    :func:`open_dataset`; files are not checked for existence.
    """
    root = check_root(name, root)
    if name == "coco20k":
        folder, images_dir, _ = find_coco_folder(root)
        return [images_dir / base for base, _ in read_image_list(coco20k_list(root, folder, image_list))]
    folder, _, ids = voc_split(name, root)
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


def voc_split(name: str, root: Path) -> tuple[Path, str, list[str]]:
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
        "  └── coco_20k_filenames.txt                 (or --image-list FILE; `discovery eval fetch-coco20k --root ROOT`)",
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


def coco20k_list(root: Path, folder: Path, image_list: str | Path | None) -> Path:
    """The COCO20k list file: ``image_list``, else ``coco_20k_filenames.txt`` in the COCO folder or root."""
    if image_list is None:
        for candidate in (folder / COCO20K_LIST_NAME, root / COCO20K_LIST_NAME):
            if candidate.is_file():
                return candidate
        raise DatasetError(
            f"COCO20k needs LOST's image list {COCO20K_LIST_NAME}: run `discovery eval fetch-coco20k --root {root}` "
            "or pass --image-list FILE"
        )
    image_list = Path(image_list).expanduser()
    if not image_list.is_file():
        raise DatasetError(f"image list {image_list} does not exist")
    return image_list
