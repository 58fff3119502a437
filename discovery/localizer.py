"""The Python API: ``Localizer`` turns an image into a LOST (or TokenCut) box, seed, map and mask.

The expensive step (the backbone's forward pass, :meth:`Localizer.embed`) is separate from the
cheap one (:meth:`Localizer.localize`), so features computed once can serve LOST and Grad-CAM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .backbone import Backbone, eval_mode
from .backbones import load_backbone
from .defaults import DEFAULT_MAX_SIDE, DEFAULT_TAU, DISCOVERY_METHODS
from .images import ImageInput, PreparedImage, normalize_and_pad_batch, prepare
from .lost import DEFAULT_K, LostResult, localize_batch
from .precision import conv_layout, fp32_math
from .resnet import fold_batchnorm
from .tokencut import TokenCutResult
from .tokencut import localize_batch as tokencut_batch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Embedding:
    """A prepared image and its backbone features ``(C, h, w)`` float32 (on the backbone's device;
    C = ``backbone.channels``, 2048 for the ResNet50s' layer4)."""

    image: PreparedImage
    features: torch.Tensor


@dataclass(frozen=True, eq=False)
class Localization:
    """The discovery method's answer for one image (LOST's, or TokenCut's).

    Attributes:
        box: ``(x1, y1, x2, y2)`` float pixels of the original image, right/bottom exclusive.
        seed: ``(row, col)`` on the feature grid.
        seed_xy: ``(x, y)`` float pixels of the original image, the centre of the seed's cell.
        degree: ``(h, w)`` int64, LOST's degree map (low degree = likely object); ``None`` for TokenCut.
        mask: ``(h, w)`` bool, the seed's component.
        image_size: ``(H, W)`` of the original image.
        backbone: backbone name; weights_sha256: the weights file's hash (``random-seedN`` for random).
        stride, k: the settings used (``k``: LOST's).
        method: ``lost`` or ``tokencut``.
        eigenvector: ``(h, w)`` float64, TokenCut's Fiedler vector (positive on the seed's side);
            ``None`` for LOST.
        tau: TokenCut's graph threshold (``None`` for LOST).
    """

    box: tuple[float, float, float, float]
    seed: tuple[int, int]
    seed_xy: tuple[float, float]
    degree: torch.Tensor
    mask: torch.Tensor
    image_size: tuple[int, int]
    backbone: str
    weights_sha256: str
    stride: int
    k: int
    method: str = "lost"
    eigenvector: torch.Tensor | None = None
    tau: float | None = None

    def to_json(self) -> dict:
        return {
            "box": [round(v, 2) for v in self.box],
            "seed": [round(v, 2) for v in self.seed_xy],
            "backbone": self.backbone,
            "weights_sha256": self.weights_sha256,
            **({} if self.method == "lost" else {"method": self.method, "tau": self.tau}),
        }


class Localizer:
    """LOST object discovery on a backbone (the ResNet50s, any CNN: docs/backbones.md, or a ViT: docs/vit.md).

    Args:
        backbone: a name for :func:`discovery.backbones.load_backbone`, or a loaded :class:`Backbone`
            (e.g. one built from your own trunk).
        device: where the backbone runs (``"cpu"``, ``"cuda"``...).
        stride: layer4 output stride, 32 / 16 / 8 (ignored when ``backbone`` is already loaded).
        max_side: images whose longer side exceeds this are shrunk before the forward pass (memory
            grows with the square of the patch count); boxes are mapped back to original pixels.
            ``None`` keeps native resolution (the evaluation protocol).
        weights_dir, download: see :func:`discovery.backbones.load_backbone`.
        channels_last: run convolutions in NHWC layout; ``None`` (default): the faster layout for
            the device and precision (:func:`discovery.precision.conv_layout`).
        precision: ``fp32``, or ``bf16`` / ``fp16`` autocast for the trunk (for GPUs; LOST itself
            always runs in fp32).
        fuse_batchnorm: run a copy of the trunk with every BatchNorm folded into the convolution
            before it (5-15 % faster on CPU; features equal to ~1e-6 relative). The copy is taken
            now: a backbone modified later needs a new Localizer (:meth:`with_backbone`).
        tf32: let CUDA convolutions and matmuls use TensorFloat-32 for fp32 math (PyTorch's
            default for cuDNN). Off: GPU fp32 is IEEE fp32 (see :mod:`discovery.precision`).
        features: a ViT's feature map (``k`` keys by default, ``q``, ``v``, ``tokens``; ignored
            when ``backbone`` is already loaded; see :func:`~discovery.backbones.load_backbone`).
    """

    def __init__(
        self,
        backbone: str | Backbone = "imagenet",
        device: str | torch.device = "cpu",
        stride: int = 16,
        max_side: int | None = DEFAULT_MAX_SIDE,
        weights_dir: str | Path | None = None,
        download: bool = True,
        channels_last: bool | None = None,
        precision: str = "fp32",
        fuse_batchnorm: bool = True,
        tf32: bool = False,
        features: str | None = None,
    ):
        if max_side is not None and max_side < 1:
            raise ValueError(f"max_side must be at least 1 (or None for native resolution), got {max_side}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if isinstance(backbone, str):
            backbone = load_backbone(
                backbone, device=device, stride=stride, weights_dir=weights_dir, download=download, features=features,
            )
        self.backbone = backbone
        self.max_side = max_side
        self.precision = precision
        self.tf32 = tf32
        if channels_last is None:
            self.memory_format = conv_layout(backbone.device, precision, tf32)
        else:
            self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.fuse_batchnorm = fuse_batchnorm
        fold = fuse_batchnorm and backbone.is_resnet50
        self.trunk = fold_batchnorm(backbone.trunk) if fold else backbone.trunk
        self.trunk.to(memory_format=self.memory_format)

    def with_backbone(self, backbone: Backbone) -> Localizer:
        """A Localizer with the same settings around another (e.g. modified) backbone."""
        return Localizer(
            backbone, max_side=self.max_side, precision=self.precision,
            channels_last=self.memory_format == torch.channels_last, fuse_batchnorm=self.fuse_batchnorm, tf32=self.tf32,
        )

    @property
    def stride(self) -> int:
        return self.backbone.stride

    def prepare(self, image: ImageInput) -> PreparedImage:
        """Decode, shrink to ``max_side``, normalise and pad; raises :class:`~discovery.images.ImageError`."""
        return prepare(image, self.backbone.mean, self.backbone.std, self.stride, self.max_side)

    @torch.inference_mode()
    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, 3, Hp, Wp)`` normalised padded batch → ``(B, C, h, w)`` float32 features
        (in the trunk's memory format, :attr:`memory_format`)."""
        x = batch.to(self.backbone.device).contiguous(memory_format=self.memory_format)
        dtype = PRECISIONS[self.precision]
        autocast = torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None)
        # eval_mode: a trunk the caller left in training mode must not use (or update) batch statistics
        with eval_mode(self.trunk), fp32_math(self.tf32), autocast:
            out = self.trunk(x)
        return out.float()

    def embed(self, image: ImageInput | PreparedImage) -> Embedding:
        """The expensive step: run the backbone once."""
        prepared = image if isinstance(image, PreparedImage) else self.prepare(image)
        return Embedding(prepared, self.features(prepared.tensor[None])[0])

    def embed_batch(self, images: Sequence[PreparedImage]) -> list[Embedding]:
        """One forward pass over images of the same padded size (padding is never changed)."""
        shapes = {tuple(p.tensor.shape) for p in images}
        if len(shapes) != 1:
            raise ValueError(f"a batch needs one padded size, got {sorted(shapes)}")
        feats = self.features(torch.stack([p.tensor for p in images]))
        return [Embedding(p, f) for p, f in zip(images, feats)]

    def embed_arrays(self, images: Sequence[np.ndarray]) -> list[Embedding]:
        """One forward pass over RGB uint8 ``(H, W, 3)`` arrays of one padded size, at native
        resolution (no ``max_side``, no EXIF): only uint8 goes to the device, where it is
        normalised and padded (:func:`~discovery.images.normalize_and_pad_batch`). Each
        embedding's ``image.tensor`` is a view into the device batch."""
        batch = normalize_and_pad_batch(images, self.backbone.mean, self.backbone.std, self.stride, self.backbone.device)
        feats = self.features(batch)
        sizes = [(int(a.shape[0]), int(a.shape[1])) for a in images]
        return [Embedding(PreparedImage(t, s, s, a, self.stride), f) for t, s, a, f in zip(batch, sizes, images, feats)]

    def localize(
        self, embedding: Embedding | Sequence[Embedding], k: int = DEFAULT_K, method: str = "lost",
        tau: float = DEFAULT_TAU,
    ) -> Localization | list[Localization]:
        """The cheap step: LOST (or TokenCut) on computed features (one embedding, or a same-shaped list).

        Per-query options (the same embedding can be localized with several): ``method`` ``lost`` or
        ``tokencut``; ``k``: LOST's number of expansion candidates; ``tau``: TokenCut's graph threshold."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if method not in DISCOVERY_METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(DISCOVERY_METHODS)}")
        if not -1.0 <= tau <= 1.0:
            raise ValueError(f"tau must be a cosine similarity in [-1, 1], got {tau}")
        single = isinstance(embedding, Embedding)
        items = [embedding] if single else list(embedding)
        for e in items:
            if e.image.stride != self.stride:
                raise ValueError(f"an image prepared for stride {e.image.stride} given to a stride-{self.stride} localizer")
        feats = torch.stack([e.features for e in items])
        sizes = [e.image.size for e in items]
        with fp32_math(self.tf32):
            if method == "tokencut":
                raw = tokencut_batch(feats, sizes, stride=self.stride, tau=tau)
            else:
                raw = localize_batch(feats, sizes, stride=self.stride, k=k, standardize=self.backbone.standardize)
        out = [self._to_original(e.image, r, k, tau) for e, r in zip(items, raw)]
        return out[0] if single else out

    def __call__(self, image: ImageInput, k: int = DEFAULT_K, method: str = "lost", tau: float = DEFAULT_TAU) -> Localization:
        return self.localize(self.embed(image), k=k, method=method, tau=tau)

    def _to_original(self, image: PreparedImage, res: LostResult | TokenCutResult, k: int, tau: float) -> Localization:
        geometry = image.geometry
        box = geometry.clip(geometry.box_to_original(res.box))
        info = self.backbone.info
        common = (box, res.seed, geometry.cell_centre(res.seed))
        tail = (res.mask, image.original_size, info.name, info.sha256, self.stride, k)
        if isinstance(res, TokenCutResult):
            return Localization(*common, None, *tail, method="tokencut", eigenvector=res.eigenvector, tau=tau)
        return Localization(*common, res.degree, *tail)
