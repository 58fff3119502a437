"""A seeded random patch embedding as a ``module:`` backbone: ``module:patch_backbone:patch``.

One ``stride x stride`` convolution with stride ``stride`` and a ReLU: each feature cell sees only
its own patch, so features follow colour, not position (a random ResNet50's features are dominated
by distance from the border, which puts LOST's seed in a corner). It gives LOST boxes that carry
object information on the small-object synthetic images of tests/test_cad.py.
"""

from __future__ import annotations

import torch
from torch import nn

from discovery.backbone import Backbone
from discovery.weights import IMAGENET_MEAN, IMAGENET_STD


def patch(stride: int = 16, channels: int = 64, seed: int = 0) -> Backbone:
    generator = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(3, channels, stride, stride=stride)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) / (3 * stride * stride) ** 0.5)
        conv.bias.copy_(torch.randn(channels, generator=generator) * 0.1)
    return Backbone(
        nn.Sequential(conv, nn.ReLU()), None, mean=IMAGENET_MEAN, std=IMAGENET_STD, stride=stride,
        name=f"patch{stride}-seed{seed}", architecture="patch-embedding", channels=channels,
    )
