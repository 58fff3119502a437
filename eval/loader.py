"""Decoding in DataLoader workers, and batches of images that share one padded size.

LOST pads each image bottom/right to a multiple of 16, the stride (docs/protocol.md); a batch may only hold images
whose padded tensors already have the same shape, so no image gets extra padding and every feature
map is the one the image would get alone. Images stream in dataset order; each padded shape has its
own bucket, a full bucket becomes a batch, and when too many images wait the fullest bucket goes
early. The batching is a pure function of the order, so runs are reproducible.

Images are decoded as the reference does (``PIL.Image.open(...).convert("RGB")``): EXIF orientation
is *not* applied, because the benchmarks' boxes are in the stored pixel frame.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from discovery.images import PreparedImage, normalize_and_pad

from .datasets import Item


def load_image(path: Path, mean, std, stride: int) -> PreparedImage:
    """Decode ``path`` at native resolution without EXIF rotation; normalise and pad.

    Raises ``OSError``/``ValueError`` for unreadable files (callers turn them into one line).
    """
    with Image.open(path) as img:
        rgb = np.array(img.convert("RGB"))
    tensor = normalize_and_pad(rgb, mean, std, stride)
    size = (int(rgb.shape[0]), int(rgb.shape[1]))
    return PreparedImage(tensor, size, size, rgb)


@dataclass(frozen=True)
class Decoded:
    """A worker's answer for one item: the prepared image, or ``error`` (one line)."""

    item: Item
    image: PreparedImage | None
    error: str | None = None


class DecodeDataset(torch.utils.data.Dataset):
    """Map-style dataset over ``items``: index → :class:`Decoded` (never raises for a bad image)."""

    def __init__(self, items: Sequence[Item], mean, std, stride: int):
        self.items = list(items)
        self.mean, self.std, self.stride = tuple(mean), tuple(std), stride

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Decoded:
        item = self.items[index]
        try:
            return Decoded(item, load_image(item.path, self.mean, self.std, self.stride))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            return Decoded(item, None, f"cannot read image {item.path}: {reason}")


def _first(batch):
    return batch[0]


def decoded_stream(items: Sequence[Item], mean, std, stride: int, workers: int = 0) -> Iterator[Decoded]:
    """Decoded items in order, decoded by ``workers`` DataLoader processes (0: in this process)."""
    dataset = DecodeDataset(items, mean, std, stride)
    if not len(dataset):
        return iter(())
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=1,
        shuffle=False,
        num_workers=workers,
        collate_fn=_first,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )
    return iter(loader)


def bucketed(stream: Iterator[Decoded], batch_size: int, max_waiting: int | None = None) -> Iterator[list[Decoded]]:
    """Group decoded images into batches of one padded shape, at most ``batch_size`` each.

    Unreadable items (``error`` set) come out alone, at once. ``max_waiting`` (default
    ``4 * batch_size``) bounds the images held back in partial buckets.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    max_waiting = max(max_waiting or 4 * batch_size, batch_size)
    buckets: OrderedDict[tuple[int, ...], list[Decoded]] = OrderedDict()
    waiting = 0
    for decoded in stream:
        if decoded.image is None:
            yield [decoded]
            continue
        shape = tuple(decoded.image.tensor.shape)
        bucket = buckets.setdefault(shape, [])
        bucket.append(decoded)
        waiting += 1
        if len(bucket) == batch_size:
            waiting -= len(bucket)
            yield buckets.pop(shape)
        elif waiting > max_waiting:
            fullest = max(buckets, key=lambda s: len(buckets[s]))
            waiting -= len(buckets[fullest])
            yield buckets.pop(fullest)
    for shape in list(buckets):
        yield buckets.pop(shape)
