"""Grad-CAM / EigenCAM explainer: library cross-check, targets, padding, batches, hooks, sanity check."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import LibraryClassifier
from pytorch_grad_cam import EigenCAM, GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from discovery.backbone import Backbone
from discovery.backbones import load_backbone
from discovery.classes import resolve_class
from discovery.explain import (
    EIGEN_TARGET,
    EMBEDDING_TARGET,
    CamResult,
    Explainer,
    cam_to_box,
)
from discovery.geometry import ImageGeometry
from discovery.images import PreparedImage
from discovery.localizer import Localizer
from discovery.sanity import SANITY_LAYERS, sanity_check


class _Pooled(nn.Module):
    """A headless backbone as ``image -> pooled layer4 feature``."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone(x).mean(dim=(2, 3))


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 90, size=(height, width, 3), dtype=np.uint8)
    img[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = rng.integers(170, 255, size=(1, 1, 3), dtype=np.uint8)
    return img


def _library_cam(cls, model, layer, x, targets):
    x = x.clone().requires_grad_(True)  # frozen weights: the library needs grad to reach layer4
    with cls(model, target_layers=[layer]) as cam:
        return cam(x, targets=targets)[0]


def _no_hooks(module: nn.Module) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)
        for m in module.modules()
    )


@pytest.fixture(scope="module")
def explainer(random_backbone):
    return Explainer(Localizer(random_backbone, max_side=None))


@pytest.fixture(scope="module")
def dino_backbone(tmp_path_factory):
    """A dino-shaped backbone: plain torchvision keys with no ``fc.*``, loaded through the registry."""
    folder = tmp_path_factory.mktemp("dino")
    state = {k: v for k, v in load_backbone("random", seed=7).trunk.state_dict().items()}
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    state = {f"{names[int(k.split('.')[0])]}.{k.split('.', 1)[1]}": v for k, v in state.items()}
    torch.save(state, folder / "dino_resnet50_pretrain.pth")
    return load_backbone("dino", weights_dir=folder)


@pytest.mark.parametrize("rank", [None, 1])
def test_gradcam_matches_pytorch_grad_cam(explainer, random_backbone, rank):
    prepared = explainer.localizer.prepare(_image(64, 96))  # multiples of 16: no padding
    logits = random_backbone.classify(random_backbone(prepared.tensor[None]))[0]
    # an explicit target: the runner-up class (an arbitrary class's map may be all zero after ReLU)
    target = None if rank is None else int(logits.argsort(descending=True)[rank])
    ours = explainer(prepared, method="gradcam", target=target)
    lib_backbone = copy.deepcopy(random_backbone)
    ref = _library_cam(
        GradCAM, LibraryClassifier(lib_backbone), lib_backbone.trunk[-1], prepared.tensor[None], [ClassifierOutputTarget(ours.target)]
    )
    assert ours.cam.shape == ref.shape == (64, 96)
    assert ours.cam.max() == pytest.approx(1.0) and ref.std() > 0.05
    np.testing.assert_allclose(ours.cam, ref, atol=1e-5)
    if target is None:
        assert ours.target == int(logits.argmax())
    else:
        assert ours.target == target


@pytest.mark.parametrize("size, seed", [((80, 64), 3), ((48, 128), 8), ((128, 160), 9)])
def test_eigencam_matches_pytorch_grad_cam(explainer, random_backbone, size, seed):
    """Including the SVD's sign (EigenCAM has no sign correction in the library either)."""
    prepared = explainer.localizer.prepare(_image(*size, seed=seed))
    ours = explainer(prepared, method="eigencam")
    lib_backbone = copy.deepcopy(random_backbone)
    ref = _library_cam(EigenCAM, LibraryClassifier(lib_backbone), lib_backbone.trunk[-1], prepared.tensor[None], None)
    assert ref.std() > 0.05
    np.testing.assert_allclose(ours.cam, ref, atol=1e-5)
    assert ours.target is None and ours.probability is None and ours.target_name == EIGEN_TARGET
    assert ours.method == "eigencam"


def test_headless_embedding_target_matches_library(dino_backbone):
    assert dino_backbone.fc is None
    explainer = Explainer(Localizer(dino_backbone, max_side=None))
    prepared = explainer.localizer.prepare(_image(64, 80, seed=5))
    ours = explainer(prepared)
    assert ours.target is None and ours.probability is None and ours.target_name == EMBEDDING_TARGET
    lib_backbone = copy.deepcopy(dino_backbone)
    ref = _library_cam(GradCAM, _Pooled(lib_backbone), lib_backbone.trunk[-1], prepared.tensor[None], [lambda out: out.norm()])
    assert ref.std() > 0.05
    np.testing.assert_allclose(ours.cam, ref, atol=1e-5)
    # The documented reading: each cell's dot product with the pooled feature.
    feats = ours.embedding.features
    expected = torch.relu(torch.einsum("c,chw->hw", feats.mean(dim=(1, 2)), feats)).numpy()
    np.testing.assert_allclose(ours.raw / ours.raw.max(), expected / expected.max(), atol=1e-5)
    assert explainer(prepared, method="eigencam").cam.shape == (64, 80)
    with pytest.raises(ValueError, match="no classifier"):
        explainer(prepared, target=3)


def test_padded_image_at_stride_8(random_backbone):
    """Stride 8 and an unaligned image: padding to a multiple of 8 leaves no padded-only cell,
    and the upsampled map is cropped to the image."""
    backbone = load_backbone("random", stride=8)
    explainer = Explainer(Localizer(backbone, max_side=None))
    prepared = explainer.localizer.prepare(_image(72, 100, seed=2))
    assert tuple(prepared.tensor.shape[1:]) == (72, 104)
    res = explainer(prepared, target=11)
    assert res.embedding.features.shape[1:] == (9, 13)
    assert res.raw.shape == (9, 13) and res.cam.shape == (72, 100)
    # At layer4 Grad-CAM is CAM: d logit / d A = fc.weight[c] / cells.
    acts = res.embedding.features
    expected = torch.relu(torch.einsum("c,chw->hw", backbone.fc.weight[11], acts) / (9 * 13))
    np.testing.assert_allclose(res.raw, expected.numpy(), rtol=1e-4, atol=1e-7)
    logits = backbone.fc(acts.mean(dim=(1, 2)))
    assert res.probability == pytest.approx(float(torch.softmax(logits, 0)[11]), rel=1e-4)


def test_batch_equals_single(explainer):
    images = [explainer.localizer.prepare(_image(h, w, seed=s)) for h, w, s in ((70, 100, 0), (75, 110, 1), (80, 112, 2))]
    assert len({tuple(p.tensor.shape) for p in images}) == 1
    for method in ("gradcam", "eigencam"):
        batch = explainer.explain_batch(images, method=method)
        for prepared, got in zip(images, batch):
            single = explainer(prepared, method=method)
            assert got.cam.shape == prepared.size == single.cam.shape
            assert got.target == single.target
            np.testing.assert_allclose(got.cam, single.cam, atol=1e-4)
            np.testing.assert_allclose(got.box, single.box, atol=1e-6)
    with pytest.raises(ValueError, match="one padded size"):
        explainer.explain_batch(images + [explainer.localizer.prepare(_image(32, 32))])


def test_result_fields_and_same_forward_pass(explainer, textured_image):
    res = explainer(textured_image)
    assert isinstance(res, CamResult)
    assert res.cam.dtype == np.float32 and res.raw.dtype == np.float32
    assert res.cam.min() >= 0 and res.cam.max() <= 1
    assert res.raw.shape == (6, 8) and res.cam.shape == (96, 128)
    assert 0 < res.probability <= 1 and res.target_name == _imagenet_name(res.target)
    assert not res.embedding.features.requires_grad and res.embedding.features.dtype == torch.float32
    loc = explainer.localizer
    assert loc.localize(res.embedding).box == loc(textured_image).box
    x1, y1, x2, y2 = res.box
    assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 96
    assert res.box == cam_to_box(res.cam, res.threshold)


def _imagenet_name(index: int) -> str:
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.IMAGENET1K_V1.meta["categories"][index]


def test_box_in_original_pixels_when_shrunk(random_backbone, textured_image):
    small = Explainer(Localizer(random_backbone, max_side=64), threshold=0.3)
    res = small(textured_image)
    assert res.cam.shape == (48, 64) and res.embedding.image.original_size == (96, 128)
    assert res.embedding.image.geometry.scale == (2.0, 2.0)
    assert res.box == res.embedding.image.geometry.box_to_original(cam_to_box(res.cam, 0.3))


def test_targets_by_name_and_index(explainer, textured_image):
    by_name = explainer(textured_image, target="Tabby")
    assert by_name.target == 281 and by_name.target_name == "tabby"
    assert explainer(textured_image, target="281").target == 281
    assert resolve_class("egyptian cat") == 285
    for bad, msg in (("tabbyy", "did you mean 'tabby'"), ("cardigan", "ambiguous"), (1000, "out of range"), (-1, "out of range")):
        with pytest.raises(ValueError, match=msg):
            explainer(textured_image, target=bad)
    with pytest.raises(ValueError, match="class-agnostic"):
        explainer(textured_image, method="eigencam", target=3)
    with pytest.raises(ValueError, match="unknown method"):
        explainer(textured_image, method="scorecam")


def test_frozen_no_hooks_no_grad_even_under_inference_mode(explainer, random_backbone, textured_image):
    prepared = explainer.localizer.prepare(textured_image)
    plain = explainer(prepared).cam
    with torch.inference_mode():
        inside = explainer(prepared).cam
    with torch.no_grad():
        explainer(prepared, method="eigencam")
    np.testing.assert_array_equal(plain, inside)
    explainer.explain_batch([prepared, prepared])
    assert _no_hooks(random_backbone)
    assert all(not p.requires_grad and p.grad is None for p in random_backbone.parameters())


def test_cam_to_box_synthetic():
    cam = np.zeros((40, 60), np.float32)
    cam[5:10, 4:8] = 1.0  # small, hottest blob
    cam[20:35, 30:55] = 0.6  # large, cooler blob: the largest component above 20 % wins
    assert cam_to_box(cam) == (30.0, 20.0, 55.0, 35.0)
    assert cam_to_box(cam, threshold=0.7) == (4.0, 5.0, 8.0, 10.0)
    shrunk = ImageGeometry.at_stride((40, 60), original_size=(80, 30))  # scale (2.0, 0.5)
    assert shrunk.box_to_original(cam_to_box(cam, threshold=0.7)) == (2.0, 10.0, 4.0, 20.0)
    one = np.zeros((8, 8))
    one[3, 5] = 0.2
    assert cam_to_box(one) == (5.0, 3.0, 6.0, 4.0)  # exclusive right/bottom
    diagonal = np.eye(6)  # 8-connected: the diagonal is one region
    assert cam_to_box(diagonal, 0.5) == (0.0, 0.0, 6.0, 6.0)
    assert cam_to_box(np.zeros((4, 6))) == (0.0, 0.0, 6.0, 4.0)  # no evidence: whole image
    with pytest.raises(ValueError, match="NaN"):
        cam_to_box(np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="threshold"):
        cam_to_box(cam, threshold=1.5)
    with pytest.raises(ValueError, match="shape"):
        cam_to_box(np.zeros(5))


def test_sanity_check_changes_map_and_leaves_model_alone(explainer, random_backbone):
    prepared: PreparedImage = explainer.localizer.prepare(_image(48, 64, seed=4))
    before = {k: v.clone() for k, v in random_backbone.state_dict().items()}
    original = explainer(prepared).cam
    report = sanity_check(explainer, prepared, method="gradcam")
    assert [s.layer for s in report.steps] == list(SANITY_LAYERS)
    np.testing.assert_array_equal(report.original.cam, original)
    rhos = [s.spearman for s in report.steps]
    assert all(np.isnan(r) or r < 0.9 for r in rhos), rhos
    assert all(np.isnan(s.ssim) or s.ssim < 0.9 for s in report.steps)
    assert "spearman" in report.table() and "conv1+bn1" in report.table()
    after = random_backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    np.testing.assert_array_equal(explainer(prepared).cam, original)
    assert _no_hooks(random_backbone)

    eigen = sanity_check(explainer, prepared, method="eigencam")
    # EigenCAM ignores the classifier: randomising fc alone cannot move it; the trunk does.
    assert eigen.steps[0].layer == "fc" and eigen.steps[0].spearman == pytest.approx(1.0)
    assert eigen.steps[0].ssim == pytest.approx(1.0)
    assert any(s.spearman < 0.9 for s in eigen.steps[1:] if not np.isnan(s.spearman))


def test_sanity_check_headless_skips_fc(dino_backbone):
    explainer = Explainer(Localizer(dino_backbone, max_side=None))
    report = sanity_check(explainer, _image(48, 64, seed=6))
    assert [s.layer for s in report.steps] == list(SANITY_LAYERS[1:])


def test_explainer_arguments(random_backbone):
    with pytest.raises(TypeError):
        Explainer(random_backbone)
    with pytest.raises(ValueError, match="threshold"):
        Explainer(Localizer(random_backbone), threshold=-0.1)


def test_a_backbone_left_in_training_mode_explains_as_in_eval_mode(textured_image):
    """BatchNorm in the trunk and BatchNorm1d + dropout in the head: a caller's ``.train()`` changes
    no map (training-mode BatchNorm1d would even refuse a batch of one), and every flag comes back."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        trunk = nn.Sequential(nn.Conv2d(3, 16, 3, stride=4, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        head = nn.Sequential(nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 10))
        feats = trunk.train()(torch.randn(4, 3, 32, 32) * 2 + 1)  # non-trivial running statistics
        head.train()(feats.mean(dim=(2, 3)))
    backbone = Backbone(trunk, head, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), stride=4).requires_grad_(False)
    explainer = Explainer(Localizer(backbone, max_side=None))
    backbone.train()
    head[1].eval()
    flags = [m.training for m in backbone.modules()]
    trained = [explainer(textured_image, method=m) for m in ("gradcam", "eigencam")]
    assert [m.training for m in backbone.modules()] == flags
    backbone.eval()
    for got, expected in zip(trained, [explainer(textured_image, method=m) for m in ("gradcam", "eigencam")]):
        np.testing.assert_array_equal(got.cam, expected.cam)
        assert got.target == expected.target and got.box == expected.box
    assert trained[0].raw.std() > 0


def test_explain_takes_the_callers_embedding(explainer, textured_image, monkeypatch):
    """embed once → localize and explain; method, target and threshold are per query; no second forward."""
    loc = explainer.localizer
    emb = loc.embed(textured_image)
    lost = loc.localize(emb)
    monkeypatch.setattr(loc, "features", lambda batch: pytest.fail("explain ran the trunk"))
    res = explainer.explain(emb)
    assert isinstance(res, CamResult) and res.embedding is emb and res.threshold == explainer.threshold
    tight = explainer.explain(emb, target=res.target, threshold=0.6)
    np.testing.assert_array_equal(tight.cam, res.cam)
    assert tight.threshold == 0.6 and tight.box == cam_to_box(tight.cam, 0.6) and explainer.threshold == 0.2
    both = explainer.explain([emb, emb], method="eigencam")
    assert [r.method for r in both] == ["eigencam"] * 2 and both[0].box == both[1].box
    assert explainer.explain_embeddings([emb])[0].box == res.box
    with pytest.raises(ValueError, match="threshold"):
        explainer.explain(emb, threshold=1.5)
    monkeypatch.undo()
    np.testing.assert_array_equal(explainer(textured_image).cam, res.cam)
    assert loc.localize(emb).box == lost.box
