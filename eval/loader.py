"""Decoding in DataLoader workers, and batches of images that share one padded size.

LOST pads each image bottom/right to a multiple of the stride (docs/protocol.md); a batch may only hold
images whose padded tensors already have the same shape, so no image gets extra padding and every
feature map is the one the image would get alone. Images stream in dataset order; each padded
shape has its own bucket, a full bucket becomes a batch, and when too many images wait the fullest
bucket goes early. The batching is a pure function of the order, so runs are reproducible.

Workers only decode, to RGB uint8: each worker item is a chunk of consecutive images packed into
one flat uint8 tensor (one shared-memory hand-over per chunk instead of a float32 tensor per
image). Normalising and padding happen later, on the device the network runs on
(:meth:`discovery.localizer.Localizer.embed_arrays`).

Images are decoded as the reference does (``PIL.Image.open(...).convert("RGB")``): EXIF orientation
is *not* applied, because the benchmarks' boxes are in the stored pixel frame. Three-channel JPEGs
are decoded by ``torchvision.io.decode_jpeg`` on the CPU, which gives PIL's pixels exactly (same
libjpeg-turbo decode; tests/test_eval_loader.py checks it) and is faster; anything else, or any
JPEG it refuses, goes through PIL.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from discovery.geometry import padded_size
from discovery.images import PreparedImage, normalize_and_pad

from .datasets import Item

#: Images per worker item.
CHUNK = 8
_JPEG_MAGIC = b"\xff\xd8\xff"


def _decode_jpeg_rgb(data: bytes) -> np.ndarray | None:
    """A 3-channel JPEG decoded by torchvision (CPU), or ``None`` to let PIL do it."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to TorchCodec
            chw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    except RuntimeError:
        return None
    if chw.dim() != 3 or chw.shape[0] != 3:  # grayscale / CMYK: PIL's conversion is the reference
        return None
    return np.ascontiguousarray(chw.permute(1, 2, 0).numpy())


def read_rgb(path: Path) -> np.ndarray:
    """``path`` → RGB uint8 ``(H, W, 3)`` at native resolution, without EXIF rotation.

    Raises ``OSError``/``ValueError`` for unreadable files (callers turn them into one line).
    """
    data = Path(path).read_bytes()
    if data.startswith(_JPEG_MAGIC):
        rgb = _decode_jpeg_rgb(data)
        if rgb is not None:
            return rgb
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


def load_image(path: Path, mean, std, stride: int) -> PreparedImage:
    """Decode ``path`` as :func:`read_rgb` does; normalise and pad on the CPU (one image)."""
    rgb = read_rgb(path)
    tensor = normalize_and_pad(rgb, mean, std, stride)
    size = (int(rgb.shape[0]), int(rgb.shape[1]))
    return PreparedImage(tensor, size, size, rgb)


@dataclass(frozen=True)
class Decoded:
    """One decoded item: ``rgb`` uint8 ``(H, W, 3)`` and its ``padded`` ``(Hp, Wp)``, or ``error`` (one line)."""

    item: Item
    rgb: np.ndarray | None
    padded: tuple[int, int] | None = None
    error: str | None = None


def decode_item(item: Item, stride: int) -> Decoded:
    """Decode one item; never raises for a bad image."""
    try:
        rgb = read_rgb(item.path)
    except (OSError, ValueError, SyntaxError, RuntimeError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return Decoded(item, None, None, f"cannot read image {item.path}: {reason}")
    return Decoded(item, rgb, padded_size(rgb.shape[:2], stride))


@dataclass(frozen=True)
class Chunk:
    """A worker's answer: consecutive items, their images packed in ``flat`` (uint8, 1-D)."""

    items: tuple[Item, ...]
    shapes: tuple[tuple[int, int] | None, ...]
    errors: tuple[str | None, ...]
    flat: torch.Tensor

    def unpack(self, stride: int) -> list[Decoded]:
        data, out, at = self.flat.numpy(), [], 0
        for item, shape, error in zip(self.items, self.shapes, self.errors):
            if shape is None:
                out.append(Decoded(item, None, None, error))
                continue
            n = shape[0] * shape[1] * 3
            out.append(Decoded(item, data[at:at + n].reshape(shape[0], shape[1], 3), padded_size(shape, stride)))
            at += n
        return out


class DecodeDataset(torch.utils.data.Dataset):
    """Map-style dataset over ``items`` in chunks of ``chunk``: index → :class:`Chunk`."""

    def __init__(self, items: Sequence[Item], stride: int, chunk: int = CHUNK):
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        self.items, self.stride, self.chunk = list(items), stride, chunk

    def __len__(self) -> int:
        return -(-len(self.items) // self.chunk)

    def __getitem__(self, index: int) -> Chunk:
        decoded = [decode_item(item, self.stride) for item in self.items[index * self.chunk:(index + 1) * self.chunk]]
        arrays = [torch.from_numpy(d.rgb).reshape(-1) for d in decoded if d.rgb is not None]
        flat = torch.cat(arrays) if arrays else torch.empty(0, dtype=torch.uint8)
        return Chunk(
            tuple(d.item for d in decoded),
            tuple(None if d.rgb is None else (int(d.rgb.shape[0]), int(d.rgb.shape[1])) for d in decoded),
            tuple(d.error for d in decoded),
            flat,
        )


def _first(batch):
    return batch[0]


def decoded_stream(items: Sequence[Item], stride: int, workers: int = 0, chunk: int = CHUNK) -> Iterator[Decoded]:
    """Decoded items in order; ``workers`` DataLoader processes decode ``chunk`` images per item
    (0: decode here, one at a time, nothing held back)."""
    if workers == 0:
        return (decode_item(item, stride) for item in items)
    dataset = DecodeDataset(items, stride, chunk)
    if not len(dataset):
        return iter(())
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, shuffle=False, num_workers=workers, collate_fn=_first,
        prefetch_factor=4, persistent_workers=False,
    )
    return (d for part in loader for d in part.unpack(stride))


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
        if decoded.rgb is None:
            yield [decoded]
            continue
        shape = decoded.padded
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
