"""Backbones built outside this package: ``timm:NAME[@FILE]`` and ``module:pkg.mod:factory``.

Both end in a :class:`~discovery.backbone.Backbone` (trunk → ``(B, C, h, w)`` map, optional head on
average-pooled features, mean/std, stride); docs/backbones.md is the user's guide and states the
factory contract. They are two of the builders of :data:`discovery.backbones.BUILDERS`.
"""

from __future__ import annotations

import dataclasses
import importlib
from operator import attrgetter
from pathlib import Path

import torch
from torch import nn

from . import weights as W
from .backbone import Backbone, BackboneInfo


class TimmTrunk(nn.Module):
    """A timm model's ``forward_features`` as a trunk: ``(B, 3, H, W)`` → ``(B, C, H/s, W/s)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _checked(backbone: Backbone, name: str, stride: int) -> Backbone:
    if backbone.stride != stride:
        raise W.WeightsError(
            f"backbone {name!r} has output stride {backbone.stride}, not the requested {stride}; "
            f"pass --stride {backbone.stride} (stride={backbone.stride})"
        )
    return backbone


def _classifier_name(net: nn.Module, classifier: nn.Module) -> str:
    return next(n for n, m in net.named_modules() if m is classifier)


@torch.no_grad()
def _head_matches(net: nn.Module, head: nn.Module, channels: int) -> bool:
    """Whether timm's ``forward_head`` is ``head(mean over cells)`` (our head contract); e.g.
    ConvNeXt's normalises the pooled feature first, and such a head is not used."""
    feats = torch.randn(2, channels, 3, 4, generator=torch.Generator().manual_seed(0))
    try:
        return torch.allclose(net.forward_head(feats), head(feats.mean(dim=(2, 3))), atol=1e-4, rtol=1e-4)
    except Exception:  # noqa: BLE001 - any mismatch of shapes or structure means "not our contract"
        return False


@dataclasses.dataclass(frozen=True)
class TimmNet:
    """A timm model as built for ``timm:MODEL[@FILE]``: the network (eval mode), the weights'
    ``sha256`` (``None``: timm's own download, fingerprinted later), the file's metadata and whether
    the weights had the classifier."""

    net: nn.Module
    sha256: str | None
    metadata: dict
    has_head: bool


def build_timm(name: str, model: str, path: str | None, pretrained: bool = True, **kwargs) -> TimmNet:
    """Build timm's ``model`` (``kwargs`` to ``timm.create_model``) with timm's pretrained download
    or the local state dict ``path`` (hashed like the registry's files; only the classifier may be
    missing from it); ``pretrained=False``: timm's random init (the layout for a checkpoint's weights)."""
    try:
        import timm
    except ImportError:
        raise W.WeightsError(f"backbone {name!r} needs timm: pip install 'object-discovery[timm]'") from None
    download = pretrained and path is None
    if download and W.offline():
        raise W.WeightsError(
            f"backbone {name!r}: downloads are off (DISCOVERY_OFFLINE); give a local weights file: timm:{model}@/path/weights.safetensors"
        )
    try:
        net = timm.create_model(model, pretrained=download, **kwargs)
    except Exception as err:  # noqa: BLE001 - unknown model, unsupported stride, failed download
        raise W.WeightsError(f"backbone {name!r}: timm could not build it ({_first_line(err)})") from None
    digest, meta, has_head = None, {}, True
    if path is not None:
        file = Path(path).expanduser()
        state, meta = W.load_file(file, strip=False)
        classifier = _classifier_name(net, net.get_classifier())
        head_weight = state.get(f"{classifier}.weight")
        if head_weight is not None and head_weight.dim() == 2 and head_weight.shape[0] != net.num_classes:
            net.reset_classifier(int(head_weight.shape[0]))  # a fine-tuned head of another width
        try:
            result = net.load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise W.WeightsError(f"{file}: wrong tensor shapes for timm model {model!r} ({_first_line(err)})") from None
        missing = [k for k in result.missing_keys if not k.startswith(f"{classifier}.")]
        if missing or result.unexpected_keys:
            problem = f"missing {missing[0]}" if missing else f"unexpected {result.unexpected_keys[0]}"
            raise W.WeightsError(f"{file}: not a state dict of timm model {model!r} ({problem})")
        has_head = len(missing) == len(result.missing_keys)
        digest = W.sha256_file(file)
    return TimmNet(net.eval(), digest, {**meta, "source": "timm", "timm_model": model}, has_head)


def timm_normalisation(net: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """mean and std from the model's ``pretrained_cfg`` (ImageNet's when it has none)."""
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    return tuple(cfg.get("mean", W.IMAGENET_MEAN)), tuple(cfg.get("std", W.IMAGENET_STD))


def timm_backbone(name: str, model: str, path: str | None, stride: int) -> Backbone:
    """``timm:MODEL`` (timm's own pretrained download) or ``timm:MODEL@FILE`` (a local state dict,
    hashed like the registry's files), a CNN. The trunk is ``forward_features``; the head
    ``get_classifier()`` when timm's head is a plain average pool + that layer; mean/std from the
    model's ``pretrained_cfg``. ``stride`` other than 32 is passed as timm's ``output_stride``."""
    built = build_timm(name, model, path, **({} if stride == 32 else {"output_stride": stride}))
    net = built.net
    head = None
    if built.has_head and getattr(net, "num_classes", 0):
        candidate = net.get_classifier()
        if isinstance(candidate, nn.Module) and _head_matches(net, candidate, net.num_features):
            head = candidate
    net.reset_classifier(0)  # the trunk keeps no classifier weights
    mean, std = timm_normalisation(net)
    try:
        backbone = Backbone(TimmTrunk(net), head, mean=mean, std=std, stride=stride, name=name, architecture=f"timm:{model}")
    except ValueError as err:
        raise W.WeightsError(f"backbone {name!r}: {err}") from None
    backbone.info = dataclasses.replace(
        backbone.info, sha256=built.sha256 or backbone.info.sha256,
        path=str(Path(path).expanduser()) if path else None, metadata=built.metadata,
    )
    return _checked(backbone, name, stride)


def module_backbone(name: str, target: str, stride: int) -> Backbone:
    """``module:pkg.mod:factory``: import ``pkg.mod``, call ``factory(stride=stride)``.

    The factory returns a :class:`Backbone`, or a tuple ``(trunk, head, mean, std, stride)`` (head
    may be ``None``). The weights fingerprint is the sha256 of the trunk's and head's tensors
    unless the factory's own ``BackboneInfo`` carries one.
    """
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise W.WeightsError(f"backbone {name!r}: cannot import {module_name} ({_first_line(err)})") from None
    try:
        factory = attrgetter(attr)(module)
    except AttributeError:
        raise W.WeightsError(f"backbone {name!r}: {module_name} has no {attr}") from None
    made = factory(stride=stride)
    if isinstance(made, Backbone):
        backbone = made
        backbone.info = dataclasses.replace(made.info, name=name, metadata={**made.info.metadata, "source": "module", "factory": target})
    elif isinstance(made, tuple) and len(made) == 5:
        trunk, head, mean, std, out_stride = made
        backbone = Backbone(trunk, head, mean=mean, std=std, stride=out_stride, name=name, architecture=target)
        backbone.info = dataclasses.replace(backbone.info, metadata={"source": "module", "factory": target})
    else:
        raise W.WeightsError(
            f"backbone {name!r}: the factory must return a Backbone or (trunk, head, mean, std, stride), got {type(made).__name__}"
        )
    return _checked(backbone, name, stride)


def external_checkpoint(name: str, path: Path, state: dict, meta: dict, backbone: Backbone) -> Backbone:
    """A PUL checkpoint trained from a ``timm`` / ``module`` base: ``backbone`` is that base built
    again (the name in ``meta``); the checkpoint's ``trunk.*`` / ``fc.*`` tensors replace its weights
    (all must match)."""
    base = backbone.name
    try:
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise W.WeightsError(f"{path}: wrong tensor shapes for base {base!r} ({_first_line(err)})") from None
    if result.missing_keys or result.unexpected_keys:
        problem = f"missing {result.missing_keys[0]}" if result.missing_keys else f"unexpected {result.unexpected_keys[0]}"
        raise W.WeightsError(f"{path}: does not fit base {base!r} ({problem})")
    backbone.info = BackboneInfo(name, W.sha256_file(path), backbone.fc is not None, str(path), meta)
    return backbone
