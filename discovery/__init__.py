"""Unsupervised object discovery (LOST) and saliency on ResNet50 backbones (and any CNN).

>>> from discovery import Localizer
>>> loc = Localizer(backbone="imagenet")        # doctest: +SKIP
>>> result = loc("cat.jpg")                       # doctest: +SKIP
>>> result.box                                    # (x1, y1, x2, y2) pixels  # doctest: +SKIP

The names below are imported on first use (PEP 562), so ``import discovery`` — and with it the
``discovery`` command's ``--help`` and argument errors — does not wait for torch.
"""

from typing import Any

__version__ = "0.3.0"

__all__ = [
    "Backbone",
    "BackboneInfo",
    "Detections",
    "Detector",
    "Embedding",
    "ImageError",
    "Localization",
    "Localizer",
    "LostResult",
    "REGISTRY",
    "WeightsError",
    "WeightsSpec",
    "load_backbone",
    "localize",
    "localize_batch",
]


def __getattr__(name: str) -> Any:
    if name in ("Backbone", "BackboneInfo"):
        from . import backbone as module
    elif name == "load_backbone":
        from . import backbones as module
    elif name in ("Detections", "Detector"):
        from . import detector as module
    elif name == "ImageError":
        from . import images as module
    elif name in ("Embedding", "Localization", "Localizer"):
        from . import localizer as module
    elif name in ("LostResult", "localize", "localize_batch"):
        from . import lost as module
    elif name in ("REGISTRY", "WeightsError", "WeightsSpec"):
        from . import weights as module
    else:
        raise AttributeError(f"module 'discovery' has no attribute {name!r}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
