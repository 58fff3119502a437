"""Backbones side by side (typically a base and its PUL checkpoints) on the same images.

Per image and model: LOST's box, seed and degree map, TokenCut's box (τ = 0.2), the Grad-CAM map and box (of the model's
own top-1 class; a headless model explains its embedding norm), all from one forward pass. Per
model, against the first one (the reference):

- **function change**: ``KL(p_ref || p_model)`` of the ImageNet predictions (softmax at T = 1,
  mean over images) and the top-1 agreement, when both have a classifier head;
- **map change**: the Pearson correlation of the degree maps (same grid only) and of the Grad-CAM
  maps, mean over images (1: the same map up to scale);
- **activation outliers** per stage: :func:`discovery.pul.evidence.stage_stats` (top-4 ``|a|``,
  max over median); a CNN that is not a ResNet50 is measured at the last part of each output
  reduction 2, 4, 8, 16, 32, under ResNet's stage names ``conv1``, ``layer1`` .. ``layer4``;
- **CorLoc** of every method (``lost``, ``tokencut``, ``gradcam``) when the images come with boxes
  (:func:`discovery.eval.metrics.corloc`).

:mod:`discovery.eval.compare_report` writes the report folder; ``discovery compare`` is the command.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from discovery.backbone import Backbone, BackboneInfo, PooledTrunk, eval_mode
from discovery.backbones import load_backbone
from discovery.explain import CamResult, Explainer
from discovery.images import PreparedImage, image_files, prepare
from discovery.localizer import Localization, Localizer
from discovery.pul.evidence import STAGE_INDEX, Checkpoint, stage_stats
from discovery.pul.measures import StageStats
from discovery.pul.model import distill_kl

from .datasets import Item, open_dataset
from .metrics import CorLoc, corloc

METHODS = ("lost", "tokencut", "gradcam")
#: output reductions whose last trunk part stands for ``conv1``, ``layer1`` .. ``layer4`` (a ResNet50's)
STAGE_REDUCTIONS = (2, 4, 8, 16, 32)


@dataclass(frozen=True)
class View:
    """One model on one image: LOST, TokenCut, Grad-CAM and the logits ``(K,)`` (``None``: headless)."""

    lost: Localization
    tokencut: Localization
    cam: CamResult
    logits: torch.Tensor | None


@dataclass(frozen=True)
class FunctionChange:
    """``kl``: mean ``KL(p_ref || p_model)``; ``top1``: fraction of images with the same top-1 class."""

    kl: float
    top1: float
    images: int


@dataclass(frozen=True)
class MapChange:
    """Mean Pearson correlation with the reference's maps (``degree``: ``None`` on another grid)."""

    degree: float | None
    cam: float


@dataclass(frozen=True)
class ModelReport:
    """Everything measured for one model; ``function``/``maps`` are ``None`` for the reference
    (``function`` also when either model is headless), ``corloc`` empty without boxes."""

    name: str
    note: str | None
    function: FunctionChange | None
    maps: MapChange | None
    stages: tuple[StageStats, ...]
    corloc: dict[str, CorLoc]


@dataclass(frozen=True)
class Comparison:
    """``views[m][i]``: model ``m`` on image ``i``; ``items``: the images (boxes may be empty)."""

    items: tuple[Item, ...]
    views: tuple[tuple[View, ...], ...]
    reports: tuple[ModelReport, ...]
    has_boxes: bool


def image_items(images: str | Path | None = None, dataset: str | None = None, root: str | Path | None = None,
                limit: int | None = None) -> tuple[list[Item], bool]:
    """The images to compare and whether they have boxes: every image under ``images``, or the
    split of ``dataset`` under ``root`` (its boxes). Raises ``ValueError`` (one line)."""
    if (images is None) == (dataset is None):
        raise ValueError("give exactly one of --images DIR or --dataset NAME --root DIR")
    if dataset is not None:
        if root is None:
            raise ValueError("--dataset needs --root DIR")
        items, boxed = list(open_dataset(dataset, root).items), True
    else:
        folder = Path(images)
        if not folder.is_dir():
            raise ValueError(f"--images {images}: not a folder")
        items = [Item(p.relative_to(folder).as_posix(), p, np.zeros((0, 4))) for p in image_files(folder)]
        if not items:
            raise ValueError(f"--images {images}: no images in it")
        boxed = False
    return items[:limit] if limit else items, boxed


def explainers(names: Sequence[str], stride: int = 16, device: str = "cpu", weights_dir: Path | None = None,
               max_side: int | None = 512) -> list[Explainer]:
    """One :class:`Explainer` (and its localizer) per backbone name; at least two names."""
    if len(names) < 2:
        raise ValueError("compare needs at least two backbones (the first is the reference)")
    return [Explainer(Localizer(load_backbone(n, device=device, stride=stride, weights_dir=weights_dir), max_side=max_side))
            for n in names]


@torch.inference_mode()
def _logits(backbone: Backbone, image: PreparedImage, features: torch.Tensor) -> torch.Tensor | None:
    if backbone.head is None:
        return None
    with eval_mode(backbone):
        if isinstance(backbone.trunk, PooledTrunk):
            return backbone.predict(image.tensor[None].to(backbone.device))[0].float().cpu()
        return backbone.classify(features[None])[0].float().cpu()


def view(explainer: Explainer, image: str | Path | np.ndarray | PreparedImage, k: int = 100) -> View:
    """LOST, TokenCut, Grad-CAM and the logits of one image from one forward pass."""
    localizer = explainer.localizer
    embedding = localizer.embed(image)
    cam = explainer.explain(embedding, method="gradcam")
    return View(localizer.localize(embedding, k=k), localizer.localize(embedding, method="tokencut"), cam,
                _logits(explainer.backbone, embedding.image, embedding.features))


def function_change(reference: Sequence[View], model: Sequence[View]) -> FunctionChange | None:
    """KL and top-1 agreement of ``model``'s predictions against ``reference``'s (same images)."""
    if not reference or reference[0].logits is None or model[0].logits is None:
        return None
    ref = torch.stack([v.logits for v in reference]).double()
    out = torch.stack([v.logits for v in model]).double()
    if ref.shape != out.shape:
        return None
    kl = float(distill_kl(out, ref, 1.0))
    top1 = float((ref.argmax(1) == out.argmax(1)).double().mean())
    return FunctionChange(kl, top1, len(reference))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    if not (a.any() and b.any()):  # a constant map: 1 when both are, else nothing in common
        return float(not a.any() and not b.any())
    return float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))


def map_change(reference: Sequence[View], model: Sequence[View]) -> MapChange:
    """Mean correlation of the degree maps (when on the same grid) and of the Grad-CAM maps."""
    degree = [_pearson(r.lost.degree.numpy(), m.lost.degree.numpy()) for r, m in zip(reference, model)
              if r.lost.degree.shape == m.lost.degree.shape]
    cam = [_pearson(r.cam.cam, m.cam.cam) for r, m in zip(reference, model) if r.cam.cam.shape == m.cam.cam.shape]
    return MapChange(float(np.mean(degree)) if degree and len(degree) == len(reference) else None,
                     float(np.mean(cam)) if cam else math.nan)


def _reductions(trunk: nn.Sequential, stride: int) -> list[int]:
    """Each part's output reduction, from one forward pass of a ``16 · stride`` pixel square."""
    param = next(trunk.parameters())
    x = torch.zeros(1, 3, 16 * stride, 16 * stride, device=param.device)
    side, out = x.shape[-1], []
    with torch.inference_mode(), eval_mode(trunk):
        for part in trunk:
            x = part(x)
            out.append(side // x.shape[-1] if x.dim() == 4 else 0)
    return out


def staged(backbone: Backbone) -> Backbone | None:
    """``backbone`` with a trunk whose parts ``STAGE_INDEX`` names are the last part of each output
    reduction in :data:`STAGE_REDUCTIONS` (a ResNet50 as it is); ``None`` when its trunk is not a
    sequence of feature maps that reaches each of those reductions (a ViT, say)."""
    if backbone.is_resnet50:
        return backbone
    trunk = backbone.trunk
    if not isinstance(trunk, nn.Sequential) or isinstance(trunk, PooledTrunk):
        return None
    reductions = _reductions(trunk, backbone.stride)
    ends = [max((i for i, r in enumerate(reductions) if r == want), default=-1) for want in STAGE_REDUCTIONS]
    if min(ends) < 0 or ends != sorted(ends):
        return None
    parts: list[nn.Module] = [nn.Identity() for _ in range(max(STAGE_INDEX.values()) + 1)]
    start = 0
    for at, end in zip(sorted(STAGE_INDEX.values()), ends):
        parts[at] = nn.Sequential(*list(trunk)[start:end + 1])
        start = end + 1
    info = BackboneInfo(backbone.name, backbone.info.sha256, False)
    return Backbone(nn.Sequential(*parts), None, mean=backbone.mean, std=backbone.std, stride=backbone.stride,
                    info=info, channels=backbone.channels)


def stages(backbone: Backbone, images: Sequence[Item], label: str, max_side: int | None) -> tuple[StageStats, ...]:
    """Activation statistics per stage over ``images`` (empty for a trunk with no such stages)."""
    measured = staged(backbone)
    if measured is None:
        return ()
    prepared = [prepare(str(item.path), backbone.mean, backbone.std, backbone.stride, max_side) for item in images]
    return tuple(stage_stats(Checkpoint(backbone.name, label, measured, None, {}), prepared))


def boxes_of(items: Sequence[Item], views: Sequence[View]) -> dict[str, dict[str, tuple[float, ...]]]:
    """Method → image id → box."""
    return {"lost": {i.image_id: v.lost.box for i, v in zip(items, views)},
            "tokencut": {i.image_id: v.tokencut.box for i, v in zip(items, views)},
            "gradcam": {i.image_id: v.cam.box for i, v in zip(items, views)}}


def whole_image_corloc(items: Sequence[Item]) -> CorLoc:
    """CorLoc of the box that is the whole image: the floor a method must beat on a set of large objects."""
    sizes = {}
    for item in items:
        with Image.open(item.path) as image:
            sizes[item.image_id] = (0.0, 0.0, float(image.width), float(image.height))
    return corloc(items, sizes)


def compare(explainers_: Sequence[Explainer], items: Sequence[Item], has_boxes: bool, k: int = 100,
            max_side: int | None = 512) -> Comparison:
    """Run every model on every image and measure each against the first (see the module doc)."""
    views = tuple(tuple(view(e, str(item.path), k) for item in items) for e in explainers_)
    reports = []
    for index, (explainer, own) in enumerate(zip(explainers_, views)):
        backbone = explainer.backbone
        found = boxes_of(items, own)
        reports.append(ModelReport(
            backbone.name, backbone.info.pipeline_check,
            None if index == 0 else function_change(views[0], own),
            None if index == 0 else map_change(views[0], own),
            stages(backbone, items, backbone.name, max_side),
            {m: corloc(items, found[m]) for m in METHODS} if has_boxes else {},
        ))
    return Comparison(tuple(items), views, tuple(reports), has_boxes)
