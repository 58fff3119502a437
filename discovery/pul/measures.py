"""What ``discovery pul evidence`` measures, as the tables (:mod:`discovery.pul.evidence`) and the
figures (:mod:`discovery.pul.figures`) read it: the stages, a stage's activation statistics, one Grad-CAM."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..architecture import RESNET50

#: The stages measured on a ResNet50 (the paper's Fig. 6): ``conv1``, the stem after its ReLU, then
#: each layer's output. A ViT's stages are its blocks (``block1`` ...), each block's output tokens.
STAGES = ("conv1", *(stage.name for stage in RESNET50.stages[1:]))
#: A patch token is "high-norm" (the artefact registers remove, Darcet et al. 2024) when its norm
#: exceeds this multiple of the median patch-token norm of the same checkpoint.
HIGH_NORM_FACTOR = 3.0


@dataclass(frozen=True)
class StageStats:
    """One stage of one checkpoint over all images: ``max_abs`` the largest ``|a|``, ``median_abs``
    the median ``|a|`` over the non-zero activations (post-ReLU zeros are switched-off units, and
    would make the median 0), ``ratio`` = max / median, ``zero_fraction``, ``top`` the 4 largest ``|a|``."""

    checkpoint: str
    stage: str
    max_abs: float
    median_abs: float
    ratio: float
    zero_fraction: float
    top: tuple[float, ...]


@dataclass(frozen=True)
class TokenNorms:
    """The L2 norms of a ViT's patch tokens at its last block's output (prefix tokens, CLS and
    registers, left out) over all images: their ``median``, ``p99`` and ``max``, and the fraction
    above :data:`HIGH_NORM_FACTOR` × the median; ``norms`` all of them (for the histogram)."""

    checkpoint: str
    median: float
    p99: float
    max: float
    high_fraction: float
    norms: np.ndarray


@dataclass(frozen=True)
class CamCell:
    """One Grad-CAM: ``cam`` ``(H, W)`` float32 in [0, 1] over ``image`` (an index into the picked
    images), for projector ``label``; ``assigned`` whether it is the image's random label."""

    checkpoint: str
    image: int
    label: int
    assigned: bool
    cam: np.ndarray
