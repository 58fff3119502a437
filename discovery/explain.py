"""Saliency maps on layer4: Grad-CAM and EigenCAM, CAM → box, and Adebayo et al.'s sanity check.

``Explainer(localizer)`` reuses a :class:`~discovery.localizer.Localizer`'s backbone and input
preparation: the trunk runs once (the same forward pass LOST uses, returned as ``CamResult.embedding``)
and Grad-CAM's gradient only flows through the head (global average pool + target), so frozen
backbones work, no hooks are registered and nothing stays attached to the model after a call.

Maps ignore the zero padding the backbone input carries: the feature map is cropped to the cells
whose receptive-field origin lies inside the image before any pooling, gradient or SVD.

Targets:
- backbones with a classifier: an ImageNet class (index or name), default the top-1 prediction
  of the classifier applied to the valid cells;
- headless backbones (e.g. ``dino``): the L2 norm of the globally pooled layer4 feature
  (:data:`EMBEDDING_TARGET`). Its Grad-CAM is, up to a positive factor, the dot product of each
  cell's feature with the pooled feature: the cells that dominate the global descriptor.
- EigenCAM is class-agnostic (the first principal component of the activations); it takes no target.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch
from torch import nn

from .backbones import Backbone
from .images import ImageInput, PreparedImage
from .localizer import Embedding, Localizer

METHODS = ("gradcam", "eigencam")

DEFAULT_THRESHOLD = 0.2
"""CAM → box threshold as a fraction of the map's maximum: Zhou et al. (CAM, 2016) segment at 20 %
of the max and box the largest connected component; Grad-CAM (Selvaraju et al.) uses 15 %. Higher
values (0.5) give tighter boxes around the peak only, which under-covers whole objects."""

EMBEDDING_TARGET = "embedding norm (L2 norm of the pooled layer4 feature)"
EIGEN_TARGET = "first principal component of layer4 activations (class-agnostic)"

SANITY_LAYERS = ("fc", "layer4", "layer3", "layer2", "layer1", "conv1+bn1")
"""Cascading randomisation order of :func:`sanity_check`, top (output) to bottom (input)."""

# Indices into Backbone.trunk (conv1, bn1, relu, maxpool, layer1..layer4).
_TRUNK_INDEX = {"conv1+bn1": (0, 1), "layer1": (4,), "layer2": (5,), "layer3": (6,), "layer4": (7,)}

Target = int | str | None


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names in index order (shipped with torchvision, nothing downloaded)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def resolve_class(target: int | str, num_classes: int = 1000) -> int:
    """An ImageNet class index from an index, a digit string or a case-insensitive name.

    Raises:
        ValueError: one line, for an unknown or ambiguous name or an out-of-range index.
    """
    if isinstance(target, str) and target.strip().isdigit():
        target = int(target.strip())
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if not 0 <= int(target) < num_classes:
            raise ValueError(f"class index {int(target)} out of range 0..{num_classes - 1}")
        return int(target)
    if not isinstance(target, str):
        raise ValueError(f"target must be a class index or name, got {type(target).__name__}")
    if num_classes != 1000:
        raise ValueError(f"class names need a 1000-way ImageNet classifier; this one has {num_classes} outputs, use an index")
    names = imagenet_classes()
    wanted = target.strip().lower()
    hits = [i for i, name in enumerate(names) if name.lower() == wanted]
    if len(hits) > 1:
        raise ValueError(f"class name {target!r} is ambiguous: indices {', '.join(map(str, hits))}")
    if not hits:
        close = difflib.get_close_matches(wanted, [n.lower() for n in names], n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; give a class index 0..999 or an ImageNet name"
        raise ValueError(f"unknown ImageNet class {target!r}{hint}")
    return hits[0]


def class_name(index: int, num_classes: int = 1000) -> str:
    """The ImageNet name of ``index`` (``"class N"`` for a non-ImageNet classifier)."""
    return imagenet_classes()[index] if num_classes == 1000 else f"class {index}"


def upsample(raw: np.ndarray, image_size: tuple[int, int], cell: tuple[float, float]) -> np.ndarray:
    """Bilinear ``(h, w)`` map → ``(H, W)``: resize to the cells' pixel extent, crop the padding."""
    h, w = raw.shape
    height = max(image_size[0], round(h * cell[0]))
    width = max(image_size[1], round(w * cell[1]))
    up = cv2.resize(raw.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return up[: image_size[0], : image_size[1]]


def normalize(cam: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] float32 (all zeros for a constant map)."""
    cam = cam.astype(np.float32)
    low, span = float(cam.min()), float(cam.max() - cam.min())
    return (cam - low) / span if span > 0 else np.zeros_like(cam)


def cam_to_box(
    cam: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    scale: tuple[float, float] = (1.0, 1.0),
) -> tuple[float, float, float, float]:
    """Box around the largest 8-connected region of ``cam >= threshold * cam.max()``.

    Args:
        cam: ``(H, W)`` float map (any range; only its maximum matters).
        threshold: fraction of the maximum, in ``[0, 1]`` (default :data:`DEFAULT_THRESHOLD`).
        scale: ``(sy, sx)`` multiplied into the box, e.g. ``PreparedImage.scale`` to get original pixels.

    Returns:
        ``(x1, y1, x2, y2)`` float pixels, right/bottom exclusive. A map with no positive value
        (no evidence anywhere) gives the whole image. Ties between equally large regions go to
        the one met first in row-major order.
    """
    cam = np.asarray(cam)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"cam must be a non-empty (H, W) array, got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise ValueError("cam contains NaN or infinite values")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    height, width = cam.shape
    sy, sx = scale
    peak = float(cam.max())
    if peak <= 0:
        return (0.0, 0.0, width * sx, height * sy)
    region = (cam >= threshold * peak).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # label 0 is the background
    x, y, w, h = (int(v) for v in stats[best, :4])
    return (x * sx, y * sy, (x + w) * sx, (y + h) * sy)


@dataclass(frozen=True)
class CamResult:
    """One image's saliency map.

    Attributes:
        cam: ``(H, W)`` float32 in [0, 1] at ``PreparedImage.size`` (the unpadded network input).
        raw: ``(h, w)`` float32, the map on the layer4 grid before upsampling and scaling (after
            the ReLU). Images are padded to a multiple of the stride, so every cell starts inside
            the image; the upsampled map is cropped to the image.
        target: the explained class index; ``None`` for embedding targets and EigenCAM.
        target_name: the ImageNet class name, or a description of the target.
        probability: softmax probability of ``target`` (classifier backbones, Grad-CAM), else ``None``.
        box: ``(x1, y1, x2, y2)`` float pixels of the ORIGINAL image, right/bottom exclusive
            (:func:`cam_to_box` at ``threshold``).
        embedding: the forward pass the map came from (features detached, float32, full padded
            grid): ``localizer.localize(result.embedding)`` gives LOST with no second forward.
        method: ``"gradcam"`` or ``"eigencam"``.
        threshold: the CAM → box threshold used.
    """

    cam: np.ndarray
    raw: np.ndarray
    target: int | None
    target_name: str
    probability: float | None
    box: tuple[float, float, float, float]
    embedding: Embedding
    method: str
    threshold: float = DEFAULT_THRESHOLD

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "target": self.target,
            "target_name": self.target_name,
            "probability": None if self.probability is None else round(self.probability, 6),
            "box": [round(v, 2) for v in self.box],
        }


def eigen_projection(activations: np.ndarray) -> np.ndarray:
    """``(C, h, w)`` activations → ``(h, w)`` projection on their first principal component.

    Same computation as pytorch-grad-cam's ``get_2d_projection`` (EigenCAM): centre the ``(h·w, C)``
    matrix per channel, take ``V[0]`` of numpy's SVD and project. The sign is the one LAPACK's SVD
    returns, as in that library (its EigenCAM has no sign correction), so a map may come out
    inverted (highlighting the background); the library cross-check test pins this behaviour.
    We take the thin SVD (``full_matrices=False``): LAPACK computes the same leading vector with
    the same sign as the library's full SVD in every case we tried, at a fraction of the cost when
    there are fewer cells than channels; the cross-check test would catch a divergence.
    """
    a = np.nan_to_num(np.asarray(activations, dtype=np.float32), nan=0.0)
    flat = a.reshape(a.shape[0], -1).T
    flat = flat - flat.mean(axis=0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    return (flat @ vt[0, :]).reshape(a.shape[1:]).astype(np.float32)


class Explainer:
    """Grad-CAM / EigenCAM on a :class:`~discovery.localizer.Localizer`'s backbone.

    Args:
        localizer: supplies the backbone (frozen is fine), ``prepare`` (and its ``max_side``) and
            the forward pass.
        threshold: CAM → box threshold, a fraction of the map's maximum.

    ``explainer(image, method="gradcam", target=None) -> CamResult``; ``image`` is anything
    ``Localizer.prepare`` takes, or a :class:`PreparedImage`.
    """

    def __init__(self, localizer: Localizer, threshold: float = DEFAULT_THRESHOLD):
        if not isinstance(localizer, Localizer):
            raise TypeError(f"Explainer needs a Localizer, got {type(localizer).__name__}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.localizer = localizer
        self.threshold = threshold

    @property
    def backbone(self) -> Backbone:
        return self.localizer.backbone

    @property
    def num_classes(self) -> int | None:
        fc = self.backbone.fc
        return None if fc is None else fc.out_features

    def check(self, method: str = "gradcam", target: Target = None) -> int | None:
        """Validate ``method`` and ``target`` for this backbone; return the class index (or ``None``).

        Raises ``ValueError`` (one line) for an unknown method, an unknown class, a class on a
        headless backbone, or a target with the class-agnostic EigenCAM.
        """
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        if target is None:
            return None
        if method == "eigencam":
            raise ValueError("eigencam is class-agnostic: it takes no target")
        if self.num_classes is None:
            raise ValueError(f"backbone {self.backbone.name!r} has no classifier: no class target (its target is the {EMBEDDING_TARGET})")
        return resolve_class(target, self.num_classes)

    def __call__(self, image: ImageInput | PreparedImage, method: str = "gradcam", target: Target = None) -> CamResult:
        """Explain one image; see :class:`CamResult`."""
        self.check(method, target)
        prepared = image if isinstance(image, PreparedImage) else self.localizer.prepare(image)
        return self.explain_batch([prepared], method=method, target=target)[0]

    def explain_batch(
        self, images: Sequence[PreparedImage], method: str = "gradcam", target: Target = None
    ) -> list[CamResult]:
        """One forward pass over prepared images of the same padded size, one map each.

        ``target`` applies to every image (``None``: each image's own top-1 / embedding target).
        Results equal the single-image calls.
        """
        if not images:
            self.check(method, target)
            return []
        return self.explain_embeddings(self.localizer.embed_batch(list(images)), method=method, target=target)

    def explain_embeddings(
        self, embeddings: Sequence[Embedding], method: str = "gradcam", target: Target = None
    ) -> list[CamResult]:
        """Maps from forward passes already made (``Localizer.embed`` / ``embed_batch``): no new pass."""
        index = self.check(method, target)
        return [self._explain(e, method, index) for e in embeddings]

    def _explain(self, emb: Embedding, method: str, index: int | None) -> CamResult:
        image = emb.image
        grid = tuple(emb.features.shape[-2:])
        padded = tuple(image.tensor.shape[-2:])
        cell = (padded[0] / grid[0], padded[1] / grid[1])
        # Autograd must work even when the caller runs us under inference_mode / no_grad.
        with torch.inference_mode(False), torch.enable_grad():
            acts = emb.features.clone()
            if method == "gradcam":
                raw, index, name, prob = self._gradcam(acts, index)
            else:
                projection = eigen_projection(acts.cpu().numpy())
                raw, name, prob = np.maximum(projection, 0), EIGEN_TARGET, None
        cam = normalize(upsample(raw, image.size, cell))
        box = cam_to_box(cam, self.threshold, image.scale)
        return CamResult(cam, raw.astype(np.float32), index, name, prob, box, emb, method, self.threshold)

    def _gradcam(self, acts: torch.Tensor, index: int | None) -> tuple[np.ndarray, int | None, str, float | None]:
        """Grad-CAM on ``(C, h, w)`` activations: weights = spatial mean of d(target)/d(activation)."""
        acts = acts.requires_grad_(True)
        prob = None
        if self.backbone.fc is None:
            score, name = acts.mean(dim=(1, 2)).norm(), EMBEDDING_TARGET
        else:
            logits = self.backbone.classify(acts[None])[0].float()
            if index is None:
                index = int(logits.argmax())
            score, name = logits[index], class_name(index, logits.numel())
            prob = float(torch.softmax(logits.detach(), dim=0)[index])
        (grad,) = torch.autograd.grad(score, acts)
        weights = grad.mean(dim=(1, 2))
        raw = torch.relu((weights[:, None, None] * acts.detach()).sum(dim=0))
        return raw.cpu().numpy().astype(np.float32), index, name, prob


@dataclass(frozen=True)
class SanityStep:
    """One step of the cascade: ``layer`` (and every layer above it) re-initialised.

    ``spearman`` and ``ssim`` compare the step's map with the original (NaN when a map is
    constant, where rank correlation is undefined); ``cam`` is the step's ``(H, W)`` map.
    """

    layer: str
    spearman: float
    ssim: float
    cam: np.ndarray

    def to_json(self) -> dict:
        def num(v: float) -> float | None:
            return None if math.isnan(v) else round(v, 4)

        return {"layer": self.layer, "spearman": num(self.spearman), "ssim": num(self.ssim)}


@dataclass(frozen=True)
class SanityReport:
    """Adebayo et al.'s cascading randomisation for one image: the original map and each step."""

    original: CamResult
    steps: tuple[SanityStep, ...]

    def table(self) -> str:
        """Plain-text table: step, layer, Spearman rank correlation, SSIM."""
        lines = [f"{'step':>4}  {'randomised (cascading)':<24}{'spearman':>9}{'ssim':>9}"]
        for i, s in enumerate(self.steps, 1):
            lines.append(f"{i:>4}  {'+ ' + s.layer if i > 1 else s.layer:<24}{s.spearman:>9.4f}{s.ssim:>9.4f}")
        return "\n".join(lines)


def compare_maps(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(spearman, ssim)`` of two same-shaped [0, 1] maps (NaN where undefined)."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() == 0 or b.std() == 0:
        rho = float("nan")
    else:
        rho = float(spearmanr(a.ravel(), b.ravel()).statistic)
    side = min(a.shape)
    if side < 3:
        return rho, float("nan")
    win = min(7, side if side % 2 else side - 1)
    return rho, float(structural_similarity(a, b, data_range=1.0, win_size=win))


def _reinit(module: nn.Module) -> None:
    """Default-initialise every conv, linear and batch-norm layer inside ``module`` (stats included)."""
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def sanity_check(
    explainer: Explainer,
    image: ImageInput | PreparedImage,
    method: str = "gradcam",
    target: Target = None,
    seed: int = 0,
) -> SanityReport:
    """Cascading model-parameter randomisation (Adebayo et al., 2018) on one image.

    Re-initialises (torchvision's default init, seeded) the layers top-down, cumulatively:
    ``fc``, ``layer4``, ``layer3``, ``layer2``, ``layer1``, ``conv1+bn1`` (batch-norm running
    statistics are reset too; ``fc`` is skipped for headless backbones), and compares each step's
    map with the original. The class target stays the original's (its top-1 when ``target`` is
    ``None``), so changes come from the weights alone. Works on a deep copy: the explainer's
    backbone is never modified.
    """
    prepared = image if isinstance(image, PreparedImage) else explainer.localizer.prepare(image)
    original = explainer(prepared, method=method, target=target)
    net = copy.deepcopy(explainer.backbone)
    fixed = original.target if method == "gradcam" else None
    steps = []
    device = explainer.backbone.device
    # on a GPU the re-initialisation draws from that device's generator: fork it too, so the
    # caller's CUDA random state is left as it was
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for layer in SANITY_LAYERS:
            if layer == "fc":
                if net.fc is None:
                    continue
                modules = [net.fc]
            else:
                modules = [net.trunk[i] for i in _TRUNK_INDEX[layer]]
            for module in modules:
                _reinit(module)
            net.requires_grad_(False)
            shadow = Explainer(explainer.localizer.with_backbone(net), explainer.threshold)
            res = shadow(prepared, method=method, target=fixed)
            rho, ssim = compare_maps(original.cam, res.cam)
            steps.append(SanityStep(layer, rho, ssim, res.cam))
    return SanityReport(original, tuple(steps))


def plot_sanity(report: SanityReport, rgb: np.ndarray, path) -> None:
    """Save a figure: the original map and each step's map over ``rgb``, and the two metrics per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import viz

    panels = [("original", report.original.cam)] + [(s.layer, s.cam) for s in report.steps]
    fig = plt.figure(figsize=(2.4 * len(panels), 5.2))
    grid = fig.add_gridspec(2, len(panels), height_ratios=(1, 1))
    for i, (title, cam) in enumerate(panels):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(viz.heatmap(rgb, cam))
        ax.set_title(title if i == 0 else f"+{title}" if i > 1 else title, fontsize=9)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    x = np.arange(1, len(report.steps) + 1)
    ax.plot(x, [s.spearman for s in report.steps], "o-", label="Spearman rank correlation")
    ax.plot(x, [s.ssim for s in report.steps], "s-", label="SSIM")
    ax.set_xticks(x, [s.layer for s in report.steps])
    ax.set_xlabel("layers randomised, cascading from the top")
    ax.set_ylabel("similarity to the original map")
    ax.set_ylim(-1.05, 1.05)
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"{report.original.method} sanity check (Adebayo et al., 2018)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
