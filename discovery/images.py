"""Image input: decode anything a user may hand us into RGB uint8, and turn it into a padded tensor.

Accepted: a path, a ``PIL.Image``, an ``(H, W)`` / ``(H, W, 1|3|4)`` uint8 numpy array, or a
``(3|1, H, W)`` float tensor in [0, 1]. EXIF orientation is honoured; grayscale, RGBA (composited on
white), palette, 16-bit and CMYK images become RGB. Every failure is an :class:`ImageError` whose
text is one line.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .geometry import ImageGeometry, padded_size

ImageInput = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]

_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


#: The file suffixes taken as images where a folder is given (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def image_files(folder: str | Path) -> list[Path]:
    """Every file under ``folder`` (recursively) with an :data:`IMAGE_SUFFIXES` suffix, hidden files
    and folders skipped, sorted by relative path."""
    root = Path(folder).expanduser()
    return sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


class ImageError(Exception):
    """An input image that cannot be used; ``str(err)`` is one line."""


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr / 257.0, 0, 255).round().astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        span = float(arr.max() - arr.min()) or 1.0
        arr = ((arr - arr.min()) / span * 255).round().astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"))


def _exif_swaps_axes(img: Image.Image) -> bool:
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return False
    return orientation in (5, 6, 7, 8)


def decode(source: ImageInput, max_side: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``source`` to RGB uint8 ``(h, w, 3)``, at most ``max_side`` on its longer side.

    Returns ``(rgb, original_size)`` where ``original_size`` is the full-resolution ``(H, W)``
    after EXIF orientation: boxes found on ``rgb`` map back to it by the ratio of the sizes.
    Large JPEGs are decoded at reduced resolution (``draft``) so memory stays bounded.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            raise ImageError("is a directory, not an image")
        if not path.exists():
            raise ImageError("no such file")
        if path.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(path)
                width, height = img.size
                if _exif_swaps_axes(img):
                    width, height = height, width
                if max_side is not None and max(width, height) > max_side:
                    img.draft("RGB", (max_side, max_side))
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
        except Image.DecompressionBombError as err:
            raise ImageError(f"too many pixels ({err})".split(". ")[0]) from None
        except (OSError, ValueError, SyntaxError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            if "cannot identify image file" in reason:
                reason = "not a recognised image format"
            raise ImageError(reason) from None
        original = (height, width)
    elif isinstance(source, Image.Image):
        img = ImageOps.exif_transpose(source)
        rgb = _to_rgb(img)
        original = rgb.shape[:2]
    elif isinstance(source, np.ndarray):
        rgb = _array_to_rgb(source)
        original = rgb.shape[:2]
    elif isinstance(source, torch.Tensor):
        rgb = _tensor_to_rgb(source)
        original = rgb.shape[:2]
    else:
        raise ImageError(f"unsupported input type {type(source).__name__}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError("image has no pixels")
    if max_side is not None and max(rgb.shape[:2]) > max_side:
        rgb = _shrink(rgb, max_side)
    if not rgb.flags.writeable or not rgb.flags.c_contiguous:
        rgb = np.array(rgb, order="C")
    return rgb, (int(original[0]), int(original[1]))


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise ImageError(f"numpy images must be uint8 RGB, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageError(f"numpy images must be (H, W) or (H, W, 1|3|4), got shape {arr.shape}")
    if arr.shape[2] == 4:
        return _to_rgb(Image.fromarray(arr, "RGBA"))
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    return arr


def _tensor_to_rgb(t: torch.Tensor) -> np.ndarray:
    if t.dim() != 3 or t.shape[0] not in (1, 3) or not t.is_floating_point():
        raise ImageError(f"tensor images must be float (3|1, H, W) in [0, 1], got {t.dtype} {tuple(t.shape)}")
    t = t.detach().float().cpu().clamp(0, 1).expand(3, -1, -1)
    return (t * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _shrink(rgb: np.ndarray, max_side: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    factor = max_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0))


@dataclass(frozen=True)
class PreparedImage:
    """A normalised, padded image ready for the backbone.

    Attributes:
        tensor: ``(3, Hp, Wp)`` float32, ImageNet-normalised, zero-padded bottom/right (after
            normalisation) to a multiple of ``stride``.
        size: ``(H, W)`` of the unpadded image the network sees.
        original_size: ``(H0, W0)`` of the user's image; ``size`` differs only when it was shrunk.
        rgb: ``(H, W, 3)`` uint8, the pixels the network sees (for overlays).
        stride: the backbone's output stride the padding was made for (16 in LOST's setting).
    """

    tensor: torch.Tensor
    size: tuple[int, int]
    original_size: tuple[int, int]
    rgb: np.ndarray
    stride: int = 16

    @property
    def geometry(self) -> ImageGeometry:
        """Original ↔ network pixels ↔ padded input ↔ feature grid of this image."""
        padded = (int(self.tensor.shape[-2]), int(self.tensor.shape[-1]))
        return ImageGeometry(tuple(self.original_size), tuple(self.size), padded, self.stride)

    @property
    def scale(self) -> tuple[float, float]:
        """``(sy, sx)``: multiply network-pixel coordinates by these to get original pixels."""
        return self.geometry.scale


def normalize_and_pad(rgb: np.ndarray, mean, std, stride: int) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` → normalised ``(3, Hp, Wp)`` float32, zero-padded as LOST does."""
    t = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255)
    t = (t - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    height, width = rgb.shape[:2]
    hp, wp = padded_size((height, width), stride)
    return F.pad(t, (0, wp - width, 0, hp - height))


def _batch_layout(images: torch.Tensor | Sequence[np.ndarray], stride: int, pin_memory: bool):
    """uint8 ``(B, Hp, Wp, 3)`` on the CPU, zero beyond each image, and the ``(H, W)`` of each."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[3] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"a batch must be uint8 (B, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        size = (int(images.shape[1]), int(images.shape[2]))
        hp, wp = padded_size(size, stride)
        if (hp, wp) == size:
            return images, [size] * images.shape[0]
        images = F.pad(images, (0, 0, 0, wp - size[1], 0, hp - size[0]))
        return images, [size] * images.shape[0]
    if not images:
        raise ValueError("a batch needs at least one image")
    sizes = [(int(a.shape[0]), int(a.shape[1])) for a in images]
    padded = {padded_size(s, stride) for s in sizes}
    if len(padded) != 1:
        raise ValueError(f"a batch needs one padded size, got {sorted(padded)}")
    hp, wp = padded.pop()
    out = torch.zeros((len(images), hp, wp, 3), dtype=torch.uint8, pin_memory=pin_memory)
    view = out.numpy()
    for slot, rgb, (h, w) in zip(view, images, sizes):
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"batch images must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
        slot[:h, :w] = rgb
    return out, sizes


def normalize_and_pad_batch(
    images: torch.Tensor | Sequence[np.ndarray], mean, std, stride: int, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """RGB uint8 images of one padded size → normalised ``(B, 3, Hp, Wp)`` float32 on ``device``.

    ``images``: a uint8 ``(B, H, W, 3)`` tensor (all ``H x W``; on any device) or a list of uint8
    ``(H_i, W_i, 3)`` arrays whose sizes pad to the same ``(Hp, Wp)``. Only uint8 crosses to the
    device (from pinned memory, without blocking, when ``device`` is CUDA); normalisation and
    padding happen there. Each image equals :func:`normalize_and_pad` of it bit for bit (float32
    ``(x / 255 - mean) / std``, zeros after normalisation beyond the image).
    """
    device = torch.device(device)
    pin = device.type == "cuda" and not isinstance(images, torch.Tensor)
    batch, sizes = _batch_layout(images, stride, pin)
    batch = batch.to(device, non_blocking=True)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32, device=device)[:, None, None]
    # a tensor divisor, not the number 255: CUDA turns division by a host scalar into multiplication
    # by its reciprocal, which is not bit-identical to the CPU's true division
    t = batch.permute(0, 3, 1, 2).float().div_(torch.tensor(255.0, device=device))
    t = (t - mean_t) / std_t
    hp, wp = t.shape[2:]
    if any(s != (hp, wp) for s in sizes):
        heights = torch.tensor([s[0] for s in sizes], device=device)
        widths = torch.tensor([s[1] for s in sizes], device=device)
        inside = (torch.arange(hp, device=device)[None, :, None] < heights[:, None, None]) & (
            torch.arange(wp, device=device)[None, None, :] < widths[:, None, None]
        )
        t = torch.where(inside[:, None], t, torch.zeros((), device=device))
    return t


def prepare(source: ImageInput, mean, std, stride: int = 16, max_side: int | None = None) -> PreparedImage:
    """Decode ``source`` and make the backbone's input; see :class:`PreparedImage`."""
    rgb, original = decode(source, max_side)
    tensor = normalize_and_pad(rgb, mean, std, stride)
    return PreparedImage(tensor, (rgb.shape[0], rgb.shape[1]), original, rgb, stride)
