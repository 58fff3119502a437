"""Backbones by name: one builder per kind of name, in a dict (as torchvision's ``get_model`` and
segment-anything's ``sam_model_registry``), and :func:`load_backbone`, the one entry point.

The grammar of names is :mod:`discovery.names`; what a backbone is, :mod:`discovery.backbone`.
Device and output stride are parameters; nothing is global. A new kind is one more entry in
:data:`BUILDERS` and one more rule in the grammar; ViTs (:mod:`discovery.vit`) are built by the
registry, random and timm builders, by what the name's record or timm's registry declares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import external, resnet, vit
from . import weights as W
from .architecture import RESNET50
from .backbone import Backbone, check_device, ready
from .defaults import STRIDES
from .names import RANDOM, BackboneName, parse_backbone_name

#: Key prefix of the PUL projector a per-epoch PUL checkpoint carries beside the backbone;
#: loading a backbone ignores these keys.
PROJECTOR_PREFIX = "pul_projector."


@dataclass(frozen=True)
class Request:
    """What a builder is asked for: the name as typed and parsed, and the build options."""

    name: str
    parsed: BackboneName
    stride: int
    weights_dir: Path | None
    download: bool
    seed: int
    features: str = vit.DEFAULT_FEATURES


def _registry(r: Request) -> Backbone:
    if W.get_spec(r.name).is_vit:
        return vit.from_registry(r.name, r.features, r.weights_dir, r.download)
    return resnet.from_registry(r.name, r.stride, r.weights_dir, r.download)


def _random(r: Request) -> Backbone:
    if r.name != RANDOM:
        return vit.random_vit(r.name, r.name[len(RANDOM) + 1:], r.features, r.seed)
    return resnet.random_backbone(r.name, r.stride, r.seed)


def _timm(r: Request) -> Backbone:
    if vit.is_timm_vit(r.parsed.value):
        return vit.timm_vit(r.name, r.parsed.value, r.parsed.path, r.features)
    return external.timm_backbone(r.name, r.parsed.value, r.parsed.path, r.stride)


def _module(r: Request) -> Backbone:
    return external.module_backbone(r.name, r.parsed.value, r.stride)


def _vit_layout(r: Request, base: str) -> Backbone:
    """A ViT base's layout with no trained weights (they come from the checkpoint that names it)."""
    parsed = parse_backbone_name(base)
    if parsed.kind == "registry":
        layout = W.get_spec(base).architecture
    elif parsed.kind == "random":
        layout = base[len(RANDOM) + 1:]
    elif parsed.kind == "timm":
        return vit.timm_vit(base, parsed.value, None, r.features, pretrained=False)
    else:
        raise W.WeightsError(f"{r.parsed.value}: its base {base!r} is not a ViT name")
    return vit.random_vit(base, layout, r.features, r.seed)


def _checkpoint(r: Request) -> Backbone:
    """A checkpoint file: a ResNet50 in torchvision key names, or (its metadata says which) a PUL
    checkpoint of a ``timm`` / ``module`` base, which is built again and then takes the file's weights."""
    path = Path(r.parsed.value).expanduser()
    state, meta = W.load_file(path)
    state = {k: v for k, v in state.items() if not k.startswith(PROJECTOR_PREFIX)}
    if meta.get("architecture", RESNET50.name) == RESNET50.name:
        return resnet.from_file(r.name, path, state, meta, r.stride)
    base = str(meta.get("base", {}).get("name", ""))
    if str(meta["architecture"]).startswith(vit.ARCHITECTURE_PREFIX):
        return external.external_checkpoint(r.name, path, state, meta, _vit_layout(r, base))
    parsed = parse_backbone_name(base)
    if not parsed.is_external:
        raise W.WeightsError(f"{path}: its base {base!r} is not a timm or module backbone")
    rebuilt = BUILDERS[parsed.kind](Request(base, parsed, r.stride, r.weights_dir, r.download, r.seed))
    return external.external_checkpoint(r.name, path, state, meta, rebuilt)


#: kind of name (:attr:`discovery.names.BackboneName.kind`) → builder (on the CPU, as built).
BUILDERS: dict[str, Callable[[Request], Backbone]] = {
    "registry": _registry,
    "random": _random,
    "checkpoint": _checkpoint,
    "timm": _timm,
    "module": _module,
}


def load_backbone(
    name: str = "imagenet",
    device: str | torch.device = "cpu",
    stride: int = 16,
    weights_dir: str | Path | None = None,
    download: bool = True,
    seed: int = 0,
    features: str | None = None,
) -> Backbone:
    """Build a backbone by name, in eval mode with frozen parameters, on ``device``.

    Args:
        name: a registry name (``imagenet``, ``imagenet-v2``, ``dino``, ``random``), ``pul:PATH``,
            a path to a ``.safetensors`` / ``.pt`` / ``.pth`` ResNet50 checkpoint, or another
            CNN: ``timm:NAME[@FILE]`` or ``module:pkg.mod:factory`` (docs/backbones.md); a ViT:
            ``dino-vits16`` / ``dino-vits8`` / ``dino-vitb16`` / ``dino-vitb8``, ``random-vits16`` ...,
            or ``timm:vit_*[@FILE]`` (docs/vit.md).
        stride: output stride of a CNN's feature map: 32 (no dilation), 16 (layer4 dilated, LOST's
            setting) or 8 (layer3 and layer4 dilated); timm gets it as ``output_stride``, a module
            factory as ``stride=``, and a backbone that gives another stride is refused. A ViT's
            stride is its patch size, whatever is asked.
        weights_dir: where registry files live (default :func:`discovery.weights.default_weights_dir`).
        download: fetch a missing registry file when a network exists.
        seed: the seed of the ``random`` backbones.
        features: a ViT's feature map, one of :data:`discovery.vit.FEATURES` (default ``k``, the
            last block's keys); CNNs take none.

    Raises:
        discovery.weights.WeightsError: one line saying what is wrong and how to fix it.
    """
    if stride not in STRIDES:
        raise ValueError(f"stride must be one of {list(STRIDES)}, got {stride}")
    device = check_device(device)
    if features is not None and features not in vit.FEATURES:
        raise ValueError(f"features must be one of {', '.join(vit.FEATURES)}, got {features!r}")
    parsed = parse_backbone_name(name)
    folder = Path(weights_dir) if weights_dir is not None else None
    request = Request(name, parsed, stride, folder, download, seed, features or vit.DEFAULT_FEATURES)
    backbone = BUILDERS[parsed.kind](request)
    if features is not None and not isinstance(backbone.trunk, vit.ViTTrunk):
        raise ValueError(f"--features {features}: backbone {name!r} is not a ViT (a CNN has one feature map)")
    return ready(backbone, device)
