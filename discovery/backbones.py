"""Backbones by name: the :class:`Backbone` contract, the ResNet50s (trunk, verified weights, layer4
features), and the entry point that also builds other CNNs (:mod:`discovery.external`).

``load_backbone("imagenet")`` is the one entry point; see :func:`discovery.weights.backbone_names`
for the accepted names. Device and output stride are parameters; nothing is global.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet50

from . import weights as W

STRIDE_DILATION = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}
#: The output strides every command accepts (the one place they are spelled out).
STRIDES = tuple(sorted(STRIDE_DILATION))
#: Key prefix of the PUL projector a per-epoch PUL checkpoint carries beside the ResNet50;
#: loading a backbone ignores these keys.
PROJECTOR_PREFIX = "pul_projector."


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
        return self.sha256.startswith("random")


RESNET50 = "resnet50"


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
            with torch.no_grad():
                out = self.fc(torch.zeros(1, self.channels, device=self.device)).shape[-1]
        return int(out)

    @property
    def is_resnet50(self) -> bool:
        return self.architecture == RESNET50

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` features → ``(B, K)`` logits (global average pool + head)."""
        if self.fc is None:
            raise ValueError(f"backbone {self.name!r} has no classifier")
        return self.fc(features.mean(dim=(2, 3)))


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


def resnet_backbone(net: nn.Module, info: BackboneInfo, stride: int, mean, std) -> Backbone:
    """A torchvision ResNet50 as a :class:`Backbone`: trunk conv1..layer4 (2048 channels), head ``fc``
    when ``info.has_classifier``."""
    trunk = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )
    head = net.fc if info.has_classifier else None
    return Backbone(
        trunk, head, mean=mean, std=std, stride=stride, info=info, architecture=RESNET50,
        channels=net.fc.in_features,
    )


def _resnet(stride: int) -> nn.Module:
    return resnet50(weights=None, replace_stride_with_dilation=STRIDE_DILATION[stride])


def fold_batchnorm(trunk: nn.Sequential) -> nn.Sequential:
    """An inference copy of a ResNet trunk with each BatchNorm folded into the convolution before it.

    ``w' = w·γ/√(σ²+ε)``, ``b' = β − μ·γ/√(σ²+ε)`` (eval-mode statistics): one pass over each
    activation less. ``trunk`` itself is left unchanged.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(trunk).eval()
    fused[0], fused[1] = fuse_conv_bn_eval(fused[0], fused[1]), nn.Identity()
    for layer in fused[4:]:
        for block in layer:
            for i in (1, 2, 3):
                conv, bn = getattr(block, f"conv{i}"), getattr(block, f"bn{i}")
                setattr(block, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                setattr(block, f"bn{i}", nn.Identity())
            if block.downsample is not None:
                block.downsample = fuse_conv_bn_eval(block.downsample[0], block.downsample[1])
    return fused.requires_grad_(False)


@torch.no_grad()
def _calibrate_batchnorm(net: nn.Module) -> None:
    """Set BatchNorm statistics from seeded smooth noise images.

    At init every running mean is 0 and variance 1, so activations drift into one shared
    direction and every patch has positive affinity with every other: LOST would return the
    whole image for any input. Calibrated statistics keep the random features spatially varied,
    which is what a pipeline check needs. Uses the global RNG (the caller seeds it).
    """
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration pass
    noise = nn.functional.interpolate(torch.randn(4, 3, 24, 24), size=(96, 96), mode="bilinear")
    net.train()(noise)
    net.eval()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1


def load_state(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> bool:
    """Load ``state`` into ``net``; return whether it had the classifier.

    Only ``fc.*`` may be missing; anything else missing, unexpected or mis-shaped is refused
    (LOST's ``strict=False`` would let a prefix mismatch load nothing, silently).
    """
    result = None
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as err:
        shapes = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise W.WeightsError(f"{source}: wrong tensor shapes for ResNet50 ({shapes[0] if shapes else err})") from None
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        problem = (
            f"missing {len(missing)} keys (e.g. {missing[0]})" if missing
            else f"unexpected keys (e.g. {result.unexpected_keys[0]})"
        )
        raise W.WeightsError(f"{source}: not a ResNet50 state dict: {problem}")
    return not any(k.startswith("fc.") for k in result.missing_keys)


def backbone_from_state(
    state: dict[str, torch.Tensor], info: BackboneInfo, stride: int = 16,
    mean=W.IMAGENET_MEAN, std=W.IMAGENET_STD, device: str | torch.device = "cpu",
) -> Backbone:
    """A frozen eval-mode :class:`Backbone` from an in-memory ResNet50 state dict (torchvision key
    names; ``fc.*`` optional, ``info.has_classifier`` must say whether it is there), e.g. the
    weights of a model under training. Raises :class:`~discovery.weights.WeightsError` like loading a file."""
    net = _resnet(stride)
    load_state(net, state, info.name)
    return _ready(resnet_backbone(net, info, stride, mean, std), check_device(device))


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` this machine has; ``ValueError`` (one line) otherwise."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return device


def load_backbone(
    name: str = "imagenet",
    device: str | torch.device = "cpu",
    stride: int = 16,
    weights_dir: str | Path | None = None,
    download: bool = True,
    seed: int = 0,
) -> Backbone:
    """Build a backbone by name, in eval mode with frozen parameters, on ``device``.

    Args:
        name: a registry name (``imagenet``, ``imagenet-v2``, ``dino``, ``random``), ``pul:PATH``,
            a path to a ``.safetensors`` / ``.pt`` / ``.pth`` ResNet50 checkpoint, or another
            CNN: ``timm:NAME[@FILE]`` or ``module:pkg.mod:factory`` (docs/backbones.md).
        stride: output stride of the feature map: 32 (no dilation), 16 (layer4 dilated, LOST's
            setting) or 8 (layer3 and layer4 dilated); timm gets it as ``output_stride``, a module
            factory as ``stride=``, and a backbone that gives another stride is refused.
        weights_dir: where registry files live (default :func:`discovery.weights.default_weights_dir`).
        download: fetch a missing registry file when a network exists.
        seed: the seed of the ``random`` backbone.

    Raises:
        discovery.weights.WeightsError: one line saying what is wrong and how to fix it.
    """
    if stride not in STRIDE_DILATION:
        raise ValueError(f"stride must be one of {sorted(STRIDE_DILATION)}, got {stride}")
    device = check_device(device)
    weights_dir = Path(weights_dir) if weights_dir is not None else None
    mean, std = W.IMAGENET_MEAN, W.IMAGENET_STD
    parsed = W.parse_backbone_name(name)
    if parsed.is_external:
        from .external import load_external

        return _ready(load_external(name, parsed, stride), device)
    if parsed.kind == "checkpoint":
        path = Path(parsed.value).expanduser()
        state, meta = W.load_file(path)
        state = {k: v for k, v in state.items() if not k.startswith(PROJECTOR_PREFIX)}
        if meta.get("architecture", RESNET50) != RESNET50:
            from .external import load_external_checkpoint

            return _ready(load_external_checkpoint(name, path, state, meta, stride), device)
        net = _resnet(stride)
        has_fc = load_state(net, state, str(path))
        info = BackboneInfo(name, W.sha256_file(path), has_fc, str(path), meta)
    elif name == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = _resnet(stride)
            _calibrate_batchnorm(net)
        info = BackboneInfo(name, f"random-seed{seed}", True)
    else:
        spec = W.get_spec(name)
        path, digest = W.resolve(name, weights_dir, download)
        state, meta = W.load_file(path)
        if not spec.has_classifier:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        net = _resnet(stride)
        has_fc = load_state(net, state, str(path))
        info = BackboneInfo(name, digest, has_fc, str(path), meta)
        mean, std = spec.mean, spec.std
    return _ready(resnet_backbone(net, info, stride, mean, std), device)


def _ready(backbone: Backbone, device: torch.device) -> Backbone:
    """On ``device``, in eval mode, parameters frozen."""
    backbone = backbone.to(device).eval()
    backbone.requires_grad_(False)
    return backbone
