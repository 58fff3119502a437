"""PUL's data side: the image list, the random labels, deterministic augmentation and sharding.

Everything random here is a pure function of the run's seed and an image's position in the sorted
image list, never of the process, the worker or the batch order. That is what makes a run
reproducible on CPU, resumable in the middle of an epoch, and identical across DDP ranks:

- label of image ``i``: the ``i``-th draw of a generator seeded from ``seed`` (:func:`random_labels`);
- order of epoch ``e``: a permutation seeded from ``(seed, "order", e)`` (:func:`discovery.sampling.epoch_order`);
- augmentation of image ``i`` in epoch ``e``: a generator seeded from ``(seed, "augment", e, i)``.

No annotation file is ever opened: with ``--dataset`` only the split's image list is used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..images import IMAGE_SUFFIXES, ImageError, decode, image_files
from ..sampling import generator
from ..splits import DatasetError, image_paths


class PULError(ValueError):
    """A PUL input or configuration problem a user can fix; ``str(err)`` is one line."""


@dataclass(frozen=True)
class ImageList:
    """The training images, sorted by relative path.

    Attributes:
        root: the folder (or dataset root) the relative paths are taken from.
        paths: absolute paths, in the order labels are keyed by.
        relative: the same files as POSIX paths relative to ``root`` (what the fingerprint hashes).
        source: a human description (``folder DIR`` or ``voc07 trainval at ROOT``).
    """

    root: Path
    paths: tuple[Path, ...]
    relative: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def fingerprint(self) -> str:
        """sha256 (hex) of the sorted relative paths joined by newlines."""
        return hashlib.sha256("\n".join(self.relative).encode()).hexdigest()


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _sorted_list(root: Path, paths: Sequence[Path], source: str) -> ImageList:
    pairs = sorted({_relative(p, root): Path(p).resolve() for p in paths}.items())
    return ImageList(root, tuple(p for _, p in pairs), tuple(r for r, _ in pairs), source)


def list_folder(folder: str | Path) -> ImageList:
    """Every image under ``folder`` (:func:`discovery.images.image_files`: recursively, by suffix,
    hidden files and folders skipped), sorted by relative path.

    Raises:
        PULError: the folder does not exist or holds no image files.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise PULError(f"--images {folder}: not a folder")
    found = image_files(root)
    if not found:
        raise PULError(f"no images in {root} (looked recursively for {' '.join(IMAGE_SUFFIXES)})")
    return _sorted_list(root, found, f"folder {root}")


def list_dataset(name: str, root: str | Path) -> ImageList:
    """The image list of an evaluation split (``voc07``, ``voc12``, ``coco20k``), read from the
    split file / COCO20k list alone (:func:`discovery.splits.image_paths`): no annotation is read.

    Paths are taken relative to the folder above the images (``JPEGImages/000005.jpg``), so the
    fingerprint does not depend on which accepted root layout was typed. Listed files that are
    missing or unreadable are skipped and counted like any unreadable image.
    """
    try:
        paths = image_paths(name, root)
    except DatasetError as err:
        raise PULError(str(err)) from None
    base = paths[0].parent.parent
    return _sorted_list(base, paths, f"{name} at {base}")


def random_labels(n: int, classes: int, seed: int) -> torch.Tensor:
    """``(n,)`` int64 labels, uniform in ``[0, classes)``; label ``i`` is the ``i``-th draw of a
    generator seeded from ``seed``, so it depends on the image's position only."""
    if classes < 2:
        raise PULError(f"--classes must be at least 2 (got {classes}): one class gives a constant loss")
    return torch.randint(0, classes, (n,), generator=generator(seed, "labels"), dtype=torch.int64)


def labels_digest(labels: torch.Tensor) -> str:
    """sha256 (hex) of the labels as little-endian int64: equal digests, equal labels."""
    return hashlib.sha256(labels.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()


def resize_side(input_size: int) -> int:
    """The square side images are resized to before cropping (ImageNet's 256/224 ratio)."""
    return round(input_size * 256 / 224)


class PULImages(Dataset):
    """Images of an :class:`ImageList` as training tensors.

    ``dataset[(i, epoch)]`` returns ``(image (3, S, S) float32 normalised, label int, i)`` with
    ``S = input_size``. Training transform (SHOT's, the code base the paper used): decode to RGB,
    resize to a ``R x R`` square (``R = resize_side(S)``, bilinear), random ``S x S`` crop, random
    horizontal flip, mean/std normalisation; the crop and flip come from a generator seeded by
    ``(seed, epoch, i)``. ``epoch = -1`` gives the evaluation transform (centre crop, no flip),
    used for the probe batch. ``dataset.check(i)`` decodes only, for the readability scan.
    """

    def __init__(self, images: ImageList, labels: torch.Tensor, input_size: int, mean, std, seed: int):
        self.paths = images.paths
        self.labels = labels
        self.size = int(input_size)
        self.resize = resize_side(self.size)
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, i: int) -> np.ndarray:
        rgb, _ = decode(self.paths[i], max_side=2 * self.resize)
        return rgb

    def check(self, i: int) -> str | None:
        """``None`` if image ``i`` decodes, else the one-line reason."""
        try:
            self._decode(i)
        except ImageError as err:
            return str(err)
        return None

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        i, epoch = key
        rgb = self._decode(i)
        square = Image.fromarray(rgb).resize((self.resize, self.resize), Image.Resampling.BILINEAR)
        t = torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1).float().div_(255)
        room = self.resize - self.size
        if epoch < 0:
            top = left = room // 2
            flip = False
        else:
            g = generator(self.seed, "augment", epoch, i)
            top, left = (int(v) for v in torch.randint(0, room + 1, (2,), generator=g))
            flip = bool(torch.rand((), generator=g) < 0.5)
        t = t[:, top:top + self.size, left:left + self.size]
        if flip:
            t = t.flip(2)
        return ((t - self.mean) / self.std).contiguous(), int(self.labels[i]), i


class ScanImages(Dataset):
    """``scan[j]`` = ``(index, reason or "")`` for the ``j``-th index to check (DataLoader-friendly)."""

    def __init__(self, dataset: PULImages, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[int, str]:
        i = self.indices[j]
        return i, self.dataset.check(i) or ""
