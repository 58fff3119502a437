"""Unsupervised object discovery (LOST) and saliency on ResNet50 backbones.

>>> from discovery import Localizer
>>> loc = Localizer(backbone="imagenet")        # doctest: +SKIP
>>> result = loc("cat.jpg")                       # doctest: +SKIP
>>> result.box                                    # (x1, y1, x2, y2) pixels  # doctest: +SKIP
"""

from .backbone import Backbone, BackboneInfo
from .backbones import load_backbone
from .detector import Detections, Detector
from .images import ImageError
from .localizer import Embedding, Localization, Localizer
from .lost import LostResult, localize, localize_batch
from .weights import REGISTRY, WeightsError, WeightsSpec

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
