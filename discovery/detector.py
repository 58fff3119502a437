"""A class-agnostic Faster R-CNN built from torchvision parts, and the ``Detector`` API.

Layout ``c4`` (ResNet50 bases; LOST+CAD's, Detectron2's ``Res5ROIHeads``): the RPN and RoIAlign
read layer3 (stride 16, 1024 channels); each 14x14 RoI goes through layer4 (its first block halves
it to 7x7), is averaged to a 2048-d vector and scored for one class, "object". torchvision's
``FasterRCNN`` accepts any backbone with ``out_channels`` and any ``box_head`` module, so the C4
head is layer4 itself; no FPN is needed. docs/cad.md explains the choice.

Layout ``single`` (any other CNN, ``timm:`` / ``module:`` bases): the RPN and RoIAlign read the
whole trunk's output map, and each RoI goes through torchvision's ``TwoMLPHead``; a CNN has no
layer4 to split off.

Images go in as RGB float ``(3, H, W)`` in [0, 1]; torchvision's ``GeneralizedRCNNTransform``
normalises them with the base backbone's mean/std and resizes them so the short side is
``min_size`` (a random choice among ``min_size`` in training, ``min_size_test`` at inference) and
the long side at most ``max_size``; boxes come back in the input image's pixels.

Checkpoints are safetensors (torchvision ``FasterRCNN`` key names) with JSON metadata under the
header key ``discovery`` (``format`` :data:`FORMAT`), read without executing code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import weights as W
from .architecture import RESNET50
from .backbone import check_device, eval_mode, is_pipeline_check
from .backbones import load_backbone
from .geometry import ImageGeometry
from .images import ImageInput, decode
from .resnet import network, trunk_of

FORMAT = "discovery-cad/1"
NORMS = ("frozen", "sync")
LAYOUTS = ("c4", "single")


@dataclass(frozen=True)
class DetectorConfig:
    """The architecture and its pre/post-processing; stored in every checkpoint.

    Defaults are LOST+CAD's VOC07 config (Detectron2 C4, ``RN50_DINO_FRCNN_VOC07_CAD.yaml``).

    Attributes:
        min_size: training short sides in pixels (one drawn per batch); min_size_test: at inference.
        max_size: cap of the long side in pixels.
        anchor_sizes, aspect_ratios: the RPN anchors on the stride-16 map (pixels, height/width).
        roi_size: RoIAlign output side (layer4 halves it).
        rpn_batch, roi_batch: sampled anchors / RoIs per image for the losses.
        proposals_train, proposals_test: RPN proposals kept after NMS per image;
        pre_nms_train, pre_nms_test: before NMS.
        score_thresh, nms_thresh, detections: the final boxes' score floor, NMS IoU, count per image.
        norm: ``frozen`` (every BatchNorm a fixed affine map) or ``sync`` (trainable stages use batch
            statistics, SyncBatchNorm under torchrun on CUDA, as the reference).
        freeze_at: stages not trained: 0 none, 1 stem, 2 stem+layer1 (the reference), ... 5 all of the trunk.
            With layout ``single``: 0 trains the trunk, anything else freezes all of it.
        layout: ``c4`` (a ResNet50 base) or ``single`` (any other CNN; set by the trainer from the base).
        head_width: the ``single`` layout's RoI head width (``TwoMLPHead``'s representation size).
    """

    min_size: tuple[int, ...] = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
    min_size_test: int = 800
    max_size: int = 1333
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    roi_size: int = 14
    rpn_batch: int = 256
    roi_batch: int = 512
    pre_nms_train: int = 12000
    proposals_train: int = 2000
    pre_nms_test: int = 6000
    proposals_test: int = 1000
    score_thresh: float = 0.01
    nms_thresh: float = 0.4
    detections: int = 100
    norm: str = "frozen"
    freeze_at: int = 2
    layout: str = "c4"
    head_width: int = 1024

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.head_width < 1:
            raise ValueError(f"head_width must be at least 1, got {self.head_width}")
        if not 0 <= self.freeze_at <= 5:
            raise ValueError(f"freeze_at must be 0..5, got {self.freeze_at}")
        if not self.min_size or min(self.min_size) < 32 or self.min_size_test < 32:
            raise ValueError("image sizes must be at least 32 pixels")

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DetectorConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown detector settings {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _frozen(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm2d`` replaced by a ``FrozenBatchNorm2d`` holding its statistics."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, module.eps)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, name).copy_(getattr(module, name).detach())
        return frozen
    for name, child in module.named_children():
        setattr(module, name, _frozen(child))
    return module


class C4Trunk(nn.Sequential):
    """conv1 .. layer3 of a ResNet50: ``(B, 3, H, W)`` → ``(B, 1024, H/16, W/16)``."""

    out_channels = RESNET50.stage("layer3").channels


class MapTrunk(nn.Module):
    """Any CNN trunk as torchvision's detection backbone: ``{"0": trunk(x)}`` and ``out_channels``."""

    def __init__(self, trunk: nn.Module, out_channels: int):
        super().__init__()
        self.trunk = trunk
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"0": self.trunk(x)}


def _predictor(width: int) -> nn.Module:
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    predictor = FastRCNNPredictor(width, 2)
    # Detectron2's FastRCNNOutputLayers init (torchvision keeps nn.Linear's default, whose logits
    # scale with the feature norm: on a random base's large RoI features the first steps diverge)
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    for layer in (predictor.cls_score, predictor.bbox_pred):
        nn.init.zeros_(layer.bias)
    return predictor


def build_model(
    trunk: nn.Module, mean: Sequence[float], std: Sequence[float], config: DetectorConfig, channels: int | None = None,
) -> nn.Module:
    """A torchvision ``FasterRCNN`` (2 classes: background, object) around ``trunk`` (it is consumed).

    Layout ``c4``: a ResNet50 trunk (``nn.Sequential`` of conv1, bn1, relu, maxpool, layer1..layer4,
    not dilated); frozen stages (``config.freeze_at``) get ``requires_grad=False`` and frozen
    BatchNorm; with ``norm="frozen"`` every BatchNorm is frozen. Layout ``single``: any CNN trunk
    ``(B, 3, H, W)`` → ``(B, C, h, w)`` with ``channels`` = C (the base's declared
    :attr:`~discovery.backbone.Backbone.channels`), trained when ``freeze_at`` is 0, its BatchNorm
    frozen unless ``norm="sync"``.
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    if config.layout == "single":
        if config.norm == "frozen" or config.freeze_at > 0:
            _frozen(trunk)
        trunk.requires_grad_(config.freeze_at == 0)
        if channels is None:
            raise ValueError("a single-map detector needs the base's channel count")
        body: nn.Module = MapTrunk(trunk, channels)
        head: nn.Module = TwoMLPHead(channels * config.roi_size**2, config.head_width)
        predictor = _predictor(config.head_width)
    else:
        body, head = _c4_parts(trunk, config)
        predictor = _predictor(RESNET50.channels)
    anchors = AnchorGenerator(sizes=(tuple(config.anchor_sizes),), aspect_ratios=(tuple(config.aspect_ratios),))
    return FasterRCNN(
        body,
        min_size=tuple(config.min_size), max_size=config.max_size,
        image_mean=list(mean), image_std=list(std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=config.pre_nms_train, rpn_post_nms_top_n_train=config.proposals_train,
        rpn_pre_nms_top_n_test=config.pre_nms_test, rpn_post_nms_top_n_test=config.proposals_test,
        rpn_batch_size_per_image=config.rpn_batch,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=config.roi_size, sampling_ratio=0),
        box_head=head,
        box_predictor=predictor,
        box_score_thresh=config.score_thresh, box_nms_thresh=config.nms_thresh,
        box_detections_per_img=config.detections, box_batch_size_per_image=config.roi_batch,
    )


def _c4_parts(trunk: nn.Sequential, config: DetectorConfig) -> tuple[nn.Module, nn.Module]:
    """conv1..layer3 (the RPN's map) and layer4 + average pool (the RoI head) of a ResNet50 trunk."""
    if len(trunk) != len(RESNET50.parts):
        raise ValueError(f"expected a ResNet50 trunk of {len(RESNET50.parts)} parts, got {len(trunk)}")
    parts = list(trunk.children())
    # freeze_at counts stages: 1 = the stem, 2..5 = layer1..layer4
    for part, stage in zip(parts, map(RESNET50.stage_number, RESNET50.parts)):
        if stage <= config.freeze_at or config.norm == "frozen":
            _frozen(part)
        if stage <= config.freeze_at:
            part.requires_grad_(False)
        else:
            part.requires_grad_(True)
    split = RESNET50.index("layer4")
    return C4Trunk(*parts[:split]), nn.Sequential(*parts[split:], nn.AdaptiveAvgPool2d(1), nn.Flatten())


def set_test_size(model: nn.Module, config: DetectorConfig) -> None:
    """Make the model's transform resize to ``min_size_test`` (torchvision uses ``min_size[-1]`` in eval)."""
    model.transform.min_size = (config.min_size_test,)


def bare_trunk(config: DetectorConfig | None = None, base: str | None = None, stride: int = 32) -> tuple[nn.Module, int]:
    """The trunk a checkpoint's weights are loaded into, and its channels: an uninitialised ResNet50
    for layout ``c4``; for ``single``, the base backbone ``base`` (a ``timm:`` / ``module:`` name)
    built again at ``stride``, whose weights the checkpoint then replaces."""
    if config is not None and config.layout == "single":
        if not base:
            raise W.WeightsError("the detector's metadata names no base backbone to build its trunk from")
        rebuilt = load_backbone(base, device="cpu", stride=stride, download=False)
        return rebuilt.trunk, rebuilt.channels
    return trunk_of(network(32)), RESNET50.channels


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights and buffers as contiguous CPU tensors (DDP's ``module.`` prefix removed)."""
    model = getattr(model, "module", model)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


@dataclass(frozen=True)
class Detections:
    """A detector's boxes for one image, best first.

    Attributes:
        boxes: ``((x1, y1, x2, y2), ...)`` float pixels of the original image, right/bottom exclusive.
        scores: the "object" probability of each box, descending.
        image_size: ``(H, W)`` of the original image.
    """

    boxes: tuple[tuple[float, float, float, float], ...]
    scores: tuple[float, ...]
    image_size: tuple[int, int]

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        """The top-scoring box (LOST+CAD's single-object answer), ``None`` without detections."""
        return self.boxes[0] if self.boxes else None

    def to_json(self) -> dict[str, Any]:
        return {
            "boxes": [[round(v, 2) for v in b] for b in self.boxes],
            "scores": [round(s, 4) for s in self.scores],
        }


class Detector:
    """A trained class-agnostic detector (a ``discovery cad train`` checkpoint).

    Args:
        path: the ``.safetensors`` file.
        device: where it runs.
        max_side: images larger than this are shrunk before the model sees them (the transform
            resizes to ``min_size_test`` anyway); boxes are mapped back to original pixels.

    Raises:
        discovery.weights.WeightsError: unreadable file, or not a detector checkpoint (one line).
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", max_side: int | None = 1333):
        path = Path(path).expanduser()
        tensors, meta = W.load_file(path)
        if meta.get("format") != FORMAT:
            raise W.WeightsError(f"{path}: not a detector checkpoint (made by `discovery cad train`)")
        try:
            self.config = DetectorConfig.from_json(meta["detector"])
            mean, std = meta["base"]["mean"], meta["base"]["std"]
            base, stride = meta["base"].get("name"), int(meta["base"].get("stride", 32))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise W.WeightsError(f"{path}: malformed detector metadata ({err})") from None
        trunk, channels = bare_trunk(self.config, base, stride)
        model = build_model(trunk, mean, std, self.config, channels)
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            raise W.WeightsError(f"{path}: weights do not fit the detector ({str(err).splitlines()[0]})") from None
        set_test_size(model, self.config)
        self.device = check_device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.metadata = meta
        self.path = path
        self.sha256 = W.sha256_file(path)
        self.max_side = max_side

    @property
    def is_random(self) -> bool:
        """A pipeline check, not a model: trained from the ``random`` backbone, a checkpoint of it,
        or on the boxes of a run that was one (:func:`~discovery.backbone.is_pipeline_check`)."""
        return is_pipeline_check(self.metadata)

    @property
    def pipeline_check(self) -> str | None:
        """What notes say of a pipeline check (``None`` for a model)."""
        if not self.is_random:
            return None
        return f"detector {self.path} is a pipeline check, not a model (its base or its pseudo-boxes come from the 'random' backbone)"

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]] | None = None,
               top_k: int | None = None) -> list[Detections]:
        """Detect in RGB uint8 ``(H, W, 3)`` arrays, one forward pass for all.

        ``original_sizes``: ``(H0, W0)`` per image when the arrays were shrunk from larger
        originals (boxes are scaled back); ``top_k``: keep at most this many boxes per image.
        """
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        tensors = [torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1).float().div_(255) for rgb in images]
        with eval_mode(self.model):  # torchvision's detectors take targets and return losses in training mode
            outputs = self.model(tensors)
        results = []
        for i, (rgb, out) in enumerate(zip(images, outputs)):
            original = None if original_sizes is None else original_sizes[i]
            geometry = ImageGeometry.at_stride(rgb.shape[:2], original_size=original)
            size = geometry.original_size
            boxes = geometry.boxes_to_original(out["boxes"].float().cpu())
            scores = out["scores"].float().cpu()
            order = torch.argsort(scores, descending=True, stable=True)[:top_k]
            results.append(Detections(
                tuple(tuple(float(v) for v in boxes[j]) for j in order.tolist()),
                tuple(float(scores[j]) for j in order.tolist()),
                (int(size[0]), int(size[1])),
            ))
        return results

    def __call__(self, image: ImageInput, top_k: int | None = None) -> Detections:
        """Boxes and scores for one image (a path, PIL image, uint8 array or float tensor)."""
        rgb, original = decode(image, self.max_side)
        return self.detect([rgb], [original], top_k)[0]
