"""ImageNet class names: index ↔ name lookups for CAM targets (shipped with torchvision, nothing downloaded)."""

from __future__ import annotations

import difflib
from functools import lru_cache

import numpy as np


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
