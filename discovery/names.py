"""The grammar of backbone names: what a user may type after ``--backbone``, parsed into a kind
(the key of :data:`discovery.backbones.BUILDERS`) and a value.

- ``imagenet``, ``imagenet-v2``, ``dino``: the registry (:data:`discovery.weights.REGISTRY`);
- ``random``: seeded random init of the ResNet50, ``random-vits16`` ... of a DINO ViT (pipeline checks);
- ``pul:PATH`` or ``PATH.safetensors|.pt|.pth``: a checkpoint file;
- ``timm:NAME[@FILE]`` and ``module:pkg.mod:factory``: networks built outside this package (timm's
  ViTs become ViT backbones, :mod:`discovery.vit`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .weights import REGISTRY, WeightsError

RANDOM = "random"
CHECKPOINT_PREFIX = "pul:"
TIMM_PREFIX = "timm:"
MODULE_PREFIX = "module:"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")
#: Prefixes of the backbones built outside this package (docs/backbones.md).
EXTERNAL_PREFIXES = (TIMM_PREFIX, MODULE_PREFIX)
EXTERNAL_KINDS = ("timm", "module")
#: ``random-<layout>``: the seeded random init of each DINO ViT layout of the registry.
RANDOM_VITS = tuple(f"{RANDOM}-{spec.architecture}" for spec in REGISTRY.values() if spec.is_vit)

_MODULE_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")
_TIMM_NAME = re.compile(r"[\w.\-/]+")


def backbone_names() -> list[str]:
    """The names :func:`discovery.backbones.load_backbone` accepts, checkpoint forms last."""
    return [
        *REGISTRY, *RANDOM_VITS, f"{TIMM_PREFIX}NAME[@FILE]", f"{MODULE_PREFIX}pkg.mod:factory",
        f"{CHECKPOINT_PREFIX}PATH", "PATH.safetensors|.pt|.pth",
    ]


@dataclass(frozen=True)
class BackboneName:
    """A parsed backbone name.

    ``kind`` and ``value``:
    - ``registry``: the registry name;
    - ``random``: ``random`` or ``random-vits16`` ...;
    - ``checkpoint``: the file path as typed, without ``pul:``;
    - ``timm``: the timm model name, ``path`` the local weights file after ``@`` (or ``None``);
    - ``module``: ``pkg.mod:factory``, the factory's import path.
    """

    kind: str
    value: str
    path: str | None = None

    @property
    def is_external(self) -> bool:
        """A CNN built outside this package (``timm:`` / ``module:``), not a ResNet50 file."""
        return self.kind in EXTERNAL_KINDS


def parse_backbone_name(name: str) -> BackboneName:
    """The one parser of backbone names. Raises :class:`~discovery.weights.WeightsError` (one line)
    for anything else."""
    if name == RANDOM or name in RANDOM_VITS:
        return BackboneName("random", name)
    if name in REGISTRY:
        return BackboneName("registry", name)
    if name.startswith(TIMM_PREFIX):
        model, _, path = name[len(TIMM_PREFIX):].partition("@")
        if not _TIMM_NAME.fullmatch(model) or (path == "" and "@" in name):
            raise WeightsError(f"bad timm backbone {name!r}; write timm:NAME or timm:NAME@/path/weights.safetensors")
        return BackboneName("timm", model, path or None)
    if name.startswith(MODULE_PREFIX):
        target = name[len(MODULE_PREFIX):]
        if not _MODULE_PATH.fullmatch(target):
            raise WeightsError(f"bad module backbone {name!r}; write module:package.module:factory")
        return BackboneName("module", target)
    if name.startswith(CHECKPOINT_PREFIX) and len(name) > len(CHECKPOINT_PREFIX):
        return BackboneName("checkpoint", name[len(CHECKPOINT_PREFIX):])
    if name.endswith(CHECKPOINT_SUFFIXES):
        return BackboneName("checkpoint", name)
    raise WeightsError(f"unknown backbone {name!r}; valid: {', '.join(backbone_names())}")
