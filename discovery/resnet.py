"""The torchvision ResNet50 kind of backbone: trunk conv1..layer4 as :data:`~discovery.architecture.RESNET50`
declares it, dilation for the output stride, verified registry weights, checkpoints in torchvision
key names, the seeded ``random`` pipeline check, and the BatchNorm folding of the inference trunk.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet50

from . import weights as W
from .architecture import RESNET50
from .backbone import Backbone, BackboneInfo, check_device, ready

#: layer2/3/4 dilation (torchvision's ``replace_stride_with_dilation``) for each of :data:`~discovery.defaults.STRIDES`.
STRIDE_DILATION = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}


def network(stride: int) -> nn.Module:
    """An uninitialised torchvision ResNet50 with the output stride ``stride``."""
    return resnet50(weights=None, replace_stride_with_dilation=STRIDE_DILATION[stride])


def trunk_of(net: nn.Module) -> nn.Sequential:
    """The trunk parts of a torchvision ResNet50, in :data:`RESNET50`'s order."""
    return nn.Sequential(*(getattr(net, part) for part in RESNET50.parts))


def resnet_backbone(net: nn.Module, info: BackboneInfo, stride: int, mean, std) -> Backbone:
    """A torchvision ResNet50 as a :class:`Backbone`: the trunk, head ``fc`` when ``info.has_classifier``."""
    head = getattr(net, RESNET50.head) if info.has_classifier else None
    return Backbone(
        trunk_of(net), head, mean=mean, std=std, stride=stride, info=info, architecture=RESNET50.name,
        channels=RESNET50.channels,
    )


def fold_batchnorm(trunk: nn.Sequential) -> nn.Sequential:
    """An inference copy of a ResNet trunk with each BatchNorm folded into the convolution before it.

    ``w' = w·γ/√(σ²+ε)``, ``b' = β − μ·γ/√(σ²+ε)`` (eval-mode statistics): one pass over each
    activation less. ``trunk`` itself is left unchanged.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(trunk).eval()
    conv, bn = RESNET50.index("conv1"), RESNET50.index("bn1")
    fused[conv], fused[bn] = fuse_conv_bn_eval(fused[conv], fused[bn]), nn.Identity()
    for stage in RESNET50.stages[1:]:
        for block in fused[RESNET50.index(stage.name)]:
            for i in (1, 2, 3):
                setattr(block, f"conv{i}", fuse_conv_bn_eval(getattr(block, f"conv{i}"), getattr(block, f"bn{i}")))
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
    head = f"{RESNET50.head}."
    missing = [k for k in result.missing_keys if not k.startswith(head)]
    if missing or result.unexpected_keys:
        problem = (
            f"missing {len(missing)} keys (e.g. {missing[0]})" if missing
            else f"unexpected keys (e.g. {result.unexpected_keys[0]})"
        )
        raise W.WeightsError(f"{source}: not a ResNet50 state dict: {problem}")
    return not any(k.startswith(head) for k in result.missing_keys)


def backbone_from_state(
    state: dict[str, torch.Tensor], info: BackboneInfo, stride: int = 16,
    mean=W.IMAGENET_MEAN, std=W.IMAGENET_STD, device: str | torch.device = "cpu",
) -> Backbone:
    """A frozen eval-mode :class:`Backbone` from an in-memory ResNet50 state dict (torchvision key
    names; ``fc.*`` optional, ``info.has_classifier`` must say whether it is there), e.g. the
    weights of a model under training. Raises :class:`~discovery.weights.WeightsError` like loading a file."""
    net = network(stride)
    load_state(net, state, info.name)
    return ready(resnet_backbone(net, info, stride, mean, std), check_device(device))


def from_file(name: str, path: Path, state: dict[str, torch.Tensor], meta: dict, stride: int) -> Backbone:
    """A ResNet50 checkpoint file already read (``state``, ``meta``) as a backbone."""
    net = network(stride)
    has_fc = load_state(net, state, str(path))
    return resnet_backbone(net, BackboneInfo(name, W.sha256_file(path), has_fc, str(path), meta), stride,
                           W.IMAGENET_MEAN, W.IMAGENET_STD)


def from_registry(name: str, stride: int, weights_dir: Path | None, download: bool) -> Backbone:
    """A registry name (``imagenet``, ``imagenet-v2``, ``dino``): its file found or fetched and verified."""
    spec = W.get_spec(name)
    path, digest = W.resolve(name, weights_dir, download)
    state, meta = W.load_file(path)
    if not spec.has_classifier:
        state = {k: v for k, v in state.items() if not k.startswith(f"{RESNET50.head}.")}
    net = network(stride)
    has_fc = load_state(net, state, str(path))
    return resnet_backbone(net, BackboneInfo(name, digest, has_fc, str(path), meta), stride, spec.mean, spec.std)


def random_backbone(name: str, stride: int, seed: int) -> Backbone:
    """``random``: a seeded random init with calibrated BatchNorm statistics (a pipeline check)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = network(stride)
        _calibrate_batchnorm(net)
    return resnet_backbone(net, BackboneInfo(name, f"random-seed{seed}", True), stride, W.IMAGENET_MEAN, W.IMAGENET_STD)
