"""What a backbone is: the :class:`Backbone` contract every command relies on (trunk → feature map,
optional head, normalisation, stride), its provenance (:class:`BackboneInfo`), and running it for
inference (:func:`eval_mode`). The ones built by name are in :mod:`discovery.backbones`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .architecture import ARCHITECTURES, RESNET50, Architecture


#: The metadata key of a trained checkpoint (PUL, CAD) that says it descends from the ``random`` backbone.
PIPELINE_CHECK = "pipeline_check"


def run_is_pipeline_check(config: Mapping[str, Any]) -> bool:
    """Whether an ``eval run`` folder's ``config.json`` is a pipeline check's: its ``random_backbone``,
    or, in a run from before that key, the random init's weights hash."""
    return config.get("random_backbone") is True or str(config.get("weights_sha256", "")).startswith("random")


def is_pipeline_check(metadata: Mapping[str, Any]) -> bool:
    """Whether a trained checkpoint's ``metadata`` marks it a pipeline check, not a model: its
    :data:`PIPELINE_CHECK` key (the trainers write it, following the whole chain of bases and
    pseudo-boxes), or, in a file from before that key, a random-init base (``base.sha256``) or
    pseudo-boxes from a pipeline check's run (``pseudo_boxes.run_config``)."""
    if PIPELINE_CHECK in metadata:
        return bool(metadata[PIPELINE_CHECK])
    base = metadata.get("base")
    boxes = metadata.get("pseudo_boxes")
    run = boxes.get("run_config") if isinstance(boxes, Mapping) else None
    return (isinstance(base, Mapping) and str(base.get("sha256", "")).startswith("random")) or (
        isinstance(run, Mapping) and run_is_pipeline_check(run))


@dataclass(frozen=True)
class BackboneInfo:
    """What was loaded: ``name`` as typed, ``sha256`` of the file (``random-seedN`` for random init),
    ``has_classifier`` (the 1000-way ImageNet head is present), ``metadata`` from the checkpoint."""

    name: str
    sha256: str
    has_classifier: bool
    path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_random(self) -> bool:
        """A pipeline check, not a model: the ``random`` backbone, or a checkpoint trained from it
        (:func:`is_pipeline_check` of its metadata; PUL of PUL of ``random`` included)."""
        return self.sha256.startswith("random") or is_pipeline_check(self.metadata)

    @property
    def pipeline_check(self) -> str | None:
        """What notes and figures say of a pipeline check (``None`` for a model): "backbone
        'pul:x.safetensors' is a pipeline check, not a model (trained from the 'random' backbone)"."""
        if not self.is_random:
            return None
        origin = "" if self.sha256.startswith("random") else " (trained from the 'random' backbone)"
        return f"backbone {self.name!r} is a pipeline check, not a model{origin}"


class PooledTrunk(nn.Module):
    """A trunk whose classifier does not read the average of its feature map (a ViT's head reads
    its CLS token): it says what the head's input is. A trunk of any other class is pooled by
    averaging its map (:func:`pooled_features`)."""

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images → ``(B, C)``, the head's input."""
        raise NotImplementedError


def pooled_features(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a head reads from images ``x``: :meth:`PooledTrunk.pooled`, else the global average of
    the trunk's ``(B, C, h, w)`` map (the CNNs)."""
    return trunk.pooled(x) if isinstance(trunk, PooledTrunk) else trunk(x).mean(dim=(2, 3))


class Backbone(nn.Module):
    """A CNN split into a trunk (image → feature map) and an optional classifier head.

    The public contract every command relies on (docs/backbones.md):

    - ``trunk``: ``(B, 3, H, W)`` float32 batch, normalised with ``mean``/``std`` (RGB, 0..1 input),
      H and W multiples of ``stride`` → ``(B, C, H/stride, W/stride)`` feature map (C = ``channels``).
    - ``head`` (optional): ``(B, C)`` globally average-pooled features → ``(B, K)`` logits
      (Grad-CAM's class targets, PUL's prediction distribution). ``None``: a headless backbone.
    - ``mean``, ``std``: per-channel RGB normalisation the weights were trained with.
    - ``stride``: the trunk's output stride (images are padded to a multiple of it).

    The ResNet50s of :func:`load_backbone` have ``trunk = Sequential(conv1..layer4)``,
    ``head = fc`` and ``architecture = "resnet50"``; anything else is built with this
    constructor (or :func:`load_backbone` with ``timm:NAME`` / ``module:pkg.mod:factory``).

    Args:
        trunk, head, mean, std, stride: as above.
        info: provenance (name, weights hash...). Default: ``name`` with the sha256 of the
            trunk's and head's tensors (:func:`state_sha256`).
        name: the name recorded when ``info`` is not given.
        architecture: ``resnet50`` enables the ResNet-only paths (BatchNorm folding, the named
            sanity-check layers, torchvision-keyed PUL checkpoints); anything else is generic.
        channels: C; measured with one small forward pass when not given (which also checks
            that ``4·stride`` pixels give 4 cells: a wrong ``stride`` is a ``ValueError``).
        standardize: whether LOST standardises the features first (the ResNet path; ViT keys are
            used raw, DESIGN §11); every command's LOST follows it and ``eval run`` records it.
    """

    def __init__(
        self,
        trunk: nn.Module,
        head: nn.Module | None = None,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        stride: int,
        info: BackboneInfo | None = None,
        name: str = "custom",
        architecture: str = "custom",
        channels: int | None = None,
        standardize: bool = True,
    ):
        super().__init__()
        if len(tuple(mean)) != 3 or len(tuple(std)) != 3:
            raise ValueError("mean and std need three values (RGB)")
        if int(stride) < 1:
            raise ValueError(f"stride must be a positive integer, got {stride}")
        self.trunk = trunk
        self.fc: nn.Module | None = head
        self.stride = int(stride)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.architecture = architecture
        self.info = info or BackboneInfo(name, state_sha256(trunk, head), head is not None)
        self.channels = channels if channels is not None else _measure_channels(trunk, self.stride)
        self.standardize = bool(standardize)

    @property
    def head(self) -> nn.Module | None:
        """The classifier head (``fc`` for the ResNet50s), or ``None``."""
        return self.fc

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def num_classes(self) -> int | None:
        """K, the head's number of outputs (``None`` when headless)."""
        if self.fc is None:
            return None
        out = getattr(self.fc, "out_features", None)
        if out is None:
            with torch.no_grad(), eval_mode(self.fc):
                out = self.fc(torch.zeros(1, self.channels, device=self.device)).shape[-1]
        return int(out)

    @property
    def structure(self) -> Architecture | None:
        """The declared structure of :attr:`architecture` (``None`` for a generic trunk)."""
        return ARCHITECTURES.get(self.architecture)

    @property
    def is_resnet50(self) -> bool:
        return self.architecture == RESNET50.name

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` features → ``(B, K)`` logits (global average pool + head), for trunks
        whose head reads that pool (not a :class:`PooledTrunk`: use :meth:`predict`)."""
        if self.fc is None:
            raise ValueError(f"backbone {self.name!r} has no classifier")
        if isinstance(self.trunk, PooledTrunk):
            raise ValueError(f"backbone {self.name!r}: its head does not read the feature map; use predict(images)")
        return self.fc(features.mean(dim=(2, 3)))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images → ``(B, K)`` logits."""
        if self.fc is None:
            raise ValueError(f"backbone {self.name!r} has no classifier")
        return self.fc(pooled_features(self.trunk, x))


def state_sha256(*modules: nn.Module | None) -> str:
    """sha256 (hex) over the key names, dtypes, shapes and bytes of the modules' state dicts:
    the fingerprint of weights that come from no single file."""
    digest = hashlib.sha256()
    for i, module in enumerate(modules):
        if module is None:
            continue
        for key, value in module.state_dict().items():
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{i}:{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block; afterwards every submodule has its own training flag
    back (``module.train(flag)`` would set one flag on all of them). Inference paths use this so a
    backbone runs with its BatchNorm/dropout statistics frozen whatever state the caller left it in."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


@torch.no_grad()
def _measure_channels(trunk: nn.Module, stride: int) -> int:
    param = next(trunk.parameters(), None)
    x = torch.zeros(1, 3, 4 * stride, 4 * stride, device=param.device if param is not None else "cpu")
    with eval_mode(trunk):
        out = trunk(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"a backbone trunk must return a (B, C, h, w) tensor, got {shape}")
    if tuple(out.shape[-2:]) != (4, 4):
        raise ValueError(f"the trunk maps {4 * stride} px to {out.shape[-1]} cells: its output stride is not {stride}")
    return int(out.shape[1])


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` this machine has; ``ValueError`` (one line) otherwise."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return device


def ready(backbone: Backbone, device: torch.device) -> Backbone:
    """``backbone`` on ``device``, in eval mode, parameters frozen (how every builder returns it)."""
    backbone = backbone.to(device).eval()
    backbone.requires_grad_(False)
    return backbone
