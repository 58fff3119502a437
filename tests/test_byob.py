"""Bring your own backbone: the name parser, a hand-built Backbone, and timm:NAME@FILE (random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from discovery.backbone import Backbone
from discovery.backbones import load_backbone
from discovery.explain import EMBEDDING_TARGET, Explainer
from discovery.localizer import Localizer
from discovery.names import parse_backbone_name
from discovery.weights import sha256_file, WeightsError


@pytest.mark.parametrize("name, kind, value, path", [
    ("timm:resnet18", "timm", "resnet18", None),
    ("timm:efficientnet_lite0@/w/x.safetensors", "timm", "efficientnet_lite0", "/w/x.safetensors"),
    ("module:pkg.mod:make", "module", "pkg.mod:make", None),
    ("imagenet", "registry", "imagenet", None),
])
def test_parse_backbone_names(name, kind, value, path):
    assert parse_backbone_name(name) == type(parse_backbone_name(name))(kind, value, path)


@pytest.mark.parametrize("name", ["timm:", "timm:x@", "module:pkg", "module:a b:c"])
def test_bad_external_names_are_one_line_errors(name):
    with pytest.raises(WeightsError, match="bad"):
        parse_backbone_name(name)


def _tiny_trunk():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 24, 3, stride=2, padding=1), nn.ReLU())


def test_hand_built_headless_backbone_runs_lost_and_cams():
    backbone = Backbone(_tiny_trunk(), mean=(0.5,) * 3, std=(0.25,) * 3, stride=4, name="tiny").eval().requires_grad_(False)
    assert backbone.channels == 24 and backbone.fc is None and len(backbone.info.sha256) == 64
    localizer = Localizer(backbone, max_side=None)
    image = np.random.default_rng(0).integers(0, 255, (30, 41, 3), dtype=np.uint8)
    prepared = localizer.prepare(image)
    assert prepared.tensor.shape[-2:] == (32, 44)  # padded to a multiple of the stride
    assert localizer(image).box[2] <= 41
    explainer = Explainer(localizer)
    assert explainer(image).target_name == EMBEDDING_TARGET
    assert explainer(image, method="eigencam").cam.shape == (30, 41)
    with pytest.raises(ValueError, match="no classifier"):
        explainer(image, target=3)
    with pytest.raises(ValueError, match="output stride"):
        Backbone(_tiny_trunk(), mean=(0.5,) * 3, std=(0.25,) * 3, stride=8)


def test_timm_backbone_from_a_local_file(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    net = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    backbone = load_backbone(f"timm:resnet18@{path}", stride=16)
    assert backbone.info.sha256 == sha256_file(path) and backbone.info.path == str(path)
    assert (backbone.channels, backbone.num_classes, backbone.stride) == (512, 1000, 16)
    assert backbone.mean == tuple(net.pretrained_cfg["mean"])
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert backbone.trunk(x).shape == (1, 512, 4, 6)
        plain = load_backbone(f"timm:resnet18@{path}", stride=32)  # timm's own stride: same logits
        torch.testing.assert_close(plain.classify(plain.trunk(x)), net.eval()(x), rtol=1e-4, atol=1e-4)
    headless = tmp_path / "headless.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items() if not k.startswith("fc.")}, str(headless))
    assert load_backbone(f"timm:resnet18@{headless}", stride=32).fc is None
    with pytest.raises(WeightsError, match="not a state dict of timm model"):
        load_backbone(f"timm:resnet34@{path}", stride=32)
    with pytest.raises(WeightsError, match="downloads are off"):
        load_backbone("timm:resnet18", stride=32)
