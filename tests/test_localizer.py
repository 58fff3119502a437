"""The Localizer API on every accepted input form, odd image modes, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from discovery.backbone import Backbone
from discovery.backbones import load_backbone
from discovery.images import ImageError, decode
from discovery.localizer import Localizer


@pytest.fixture(scope="module")
def localizer(random_backbone):
    return Localizer(random_backbone)


@pytest.fixture
def png(tmp_path, textured_image):
    path = tmp_path / "img.png"
    Image.fromarray(textured_image).save(path)
    return path


def test_all_input_forms_agree(localizer, png, textured_image):
    from_path = localizer(png)
    from_pil = localizer(Image.open(png))
    from_array = localizer(textured_image)
    from_tensor = localizer(torch.from_numpy(textured_image).permute(2, 0, 1).float() / 255)
    for other in (from_pil, from_array, from_tensor):
        assert other.box == from_path.box and other.seed == from_path.seed
    assert from_path.image_size == (96, 128)
    assert from_path.degree.shape == (6, 8) and from_path.mask.shape == (6, 8)
    assert from_path.backbone == "random" and from_path.weights_sha256 == "random-seed0"
    x1, y1, x2, y2 = from_path.box
    assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 96


def test_embed_once_localize_many(localizer, textured_image):
    emb = localizer.embed(textured_image)
    assert emb.features.shape == (2048, 6, 8) and emb.features.dtype == torch.float32
    first, again = localizer.localize(emb), localizer.localize(emb)
    assert first.box == again.box and torch.equal(first.degree, again.degree)
    batch = localizer.embed_batch([emb.image, emb.image])
    torch.testing.assert_close(batch[0].features, emb.features, rtol=1e-3, atol=1e-2)  # batched conv kernels differ in rounding
    assert [r.box for r in localizer.localize(batch)] == [first.box] * 2
    with pytest.raises(ValueError, match="one padded size"):
        localizer.embed_batch([emb.image, localizer.prepare(np.zeros((40, 40, 3), np.uint8))])


def test_exif_orientation_is_honoured(tmp_path, textured_image):
    img = Image.fromarray(textured_image)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    rgb, original = decode(path)
    assert rgb.shape == (128, 96, 3) and original == (128, 96)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK", "LA", "1"])
def test_modes_become_rgb(tmp_path, textured_image, mode):
    img = Image.fromarray(textured_image)
    if mode == "I;16":
        img = Image.fromarray(textured_image[:, :, 0].astype(np.uint16) * 257)
        path = tmp_path / "deep.png"
    else:
        img = img.convert(mode)
        path = tmp_path / ("img.jpg" if mode == "CMYK" else "img.png")
    img.save(path)
    rgb, _ = decode(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (96, 128, 3)
    if mode == "I;16":
        np.testing.assert_array_equal(rgb[:, :, 0], textured_image[:, :, 0])


def test_rgba_is_composited_on_white():
    arr = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    rgb, _ = decode(arr)
    assert (rgb == 255).all()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("hello, I am text"), "not a recognised image format"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_bad_files_get_one_line(tmp_path, localizer, make, reason):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageError, match=reason) as err:
        localizer(path)
    assert "\n" not in str(err.value)


def test_truncated_jpeg(tmp_path, localizer, textured_image):
    path = tmp_path / "cut.jpg"
    Image.fromarray(textured_image).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ImageError) as err:
        localizer(path)
    assert "\n" not in str(err.value) and str(err.value)


def test_bad_arrays_and_tensors(localizer):
    with pytest.raises(ImageError, match="uint8"):
        localizer(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ImageError, match="shape"):
        localizer(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ImageError, match="tensor"):
        localizer(torch.zeros(5, 8, 8))
    with pytest.raises(ImageError, match="unsupported"):
        localizer(12)


def test_one_pixel_image_gets_the_whole_image(localizer):
    res = localizer(np.full((1, 1, 3), 200, np.uint8))
    assert res.box == (0.0, 0.0, 1.0, 1.0)


def test_constant_image_gives_a_valid_box(localizer):
    res = localizer(np.full((64, 80, 3), 128, np.uint8))
    x1, y1, x2, y2 = res.box
    assert 0 <= x1 < x2 <= 80 and 0 <= y1 < y2 <= 64
    assert all(np.isfinite(res.box))


def test_large_images_are_shrunk_and_boxes_map_back(random_backbone):
    loc = Localizer(random_backbone, max_side=64)
    img = np.zeros((300, 200, 3), np.uint8)
    img[150:300, 100:200] = 255
    emb = loc.embed(img)
    assert max(emb.image.size) == 64 and emb.image.original_size == (300, 200)
    res = loc.localize(emb)
    assert res.image_size == (300, 200)
    assert res.box[2] <= 200 and res.box[3] <= 300
    # the network saw a 64x43 image; every box edge is a multiple of the cell size mapped back
    sy, sx = emb.image.scale
    assert res.box[0] / sx == pytest.approx(round(res.box[0] / sx))


def test_huge_image_memory_is_bounded(tmp_path):
    """A 12000x9000 JPEG is decoded at reduced size and localized in well under 2 GB."""
    path = tmp_path / "huge.jpg"
    img = Image.new("RGB", (12000, 9000), (90, 120, 60))
    img.paste((230, 40, 40), (5000, 3000, 8000, 6000))
    img.save(path, quality=60)
    del img
    script = textwrap.dedent(
        f"""
        import json, re
        from discovery.localizer import Localizer
        loc = Localizer("random")
        res = loc({str(path)!r})
        # VmHWM: this process's own peak (ru_maxrss would include the parent's RSS at fork time)
        peak_mb = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
        print(json.dumps({{"box": res.box, "size": res.image_size, "peak_mb": peak_mb}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["size"] == [9000, 12000]
    x1, y1, x2, y2 = result["box"]
    assert 0 <= x1 < x2 <= 12000 and 0 <= y1 < y2 <= 9000
    assert result["peak_mb"] < 2000


def test_folded_batchnorm_matches_the_plain_trunk(random_backbone, textured_image):
    fused, plain = Localizer(random_backbone), Localizer(random_backbone, fuse_batchnorm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.trunk.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in random_backbone.trunk.modules())  # original untouched
    a, b = fused.embed(textured_image), plain.embed(textured_image)
    assert (a.features - b.features).abs().max() <= 1e-5 * b.features.abs().max()  # float rounding only
    assert fused.localize(a).box == plain.localize(b).box


@pytest.mark.parametrize("stride", [8, 32])
def test_other_strides_give_boxes_inside_the_image(stride):
    loc = Localizer(load_backbone("random", stride=stride))
    for size in ((17, 32), (40, 70), (33, 65)):
        res = loc(np.random.default_rng(0).integers(0, 255, size=(*size, 3), dtype=np.uint8))
        x1, y1, x2, y2 = res.box
        assert 0 <= x1 < x2 <= size[1] and 0 <= y1 < y2 <= size[0]


def test_bad_max_side_is_refused(random_backbone):
    with pytest.raises(ValueError, match="max_side"):
        Localizer(random_backbone, max_side=-5)


def test_trunk_layout_is_channels_last_except_ieee_fp32_on_cuda(random_backbone):
    from discovery.precision import conv_layout

    assert conv_layout("cpu", "fp32", False) == torch.channels_last
    assert conv_layout("cuda", "fp32", False) == torch.contiguous_format  # measured 8x faster on an H200
    assert conv_layout("cuda", "fp32", True) == torch.channels_last
    assert conv_layout("cuda:1", "bf16", False) == torch.channels_last
    assert Localizer(random_backbone, fuse_batchnorm=True).memory_format == torch.channels_last


def _train_mode_backbone() -> Backbone:
    """A small stride-4 CNN with BatchNorm (calibrated statistics) and dropout, as a caller might
    leave it: in training mode, with one BatchNorm switched to eval on its own."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        trunk = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Dropout(0.5),
        )
        trunk.train()(torch.randn(4, 3, 32, 32) * 2 + 1)  # non-trivial running statistics
    backbone = Backbone(trunk, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), stride=4).requires_grad_(False)
    backbone.train()
    trunk[4].eval()
    return backbone


def test_a_backbone_left_in_training_mode_runs_in_eval_mode(textured_image):
    backbone = _train_mode_backbone()
    flags = [m.training for m in backbone.modules()]
    stats = {k: v.clone() for k, v in backbone.state_dict().items()}
    loc = Localizer(backbone, max_side=None)
    assert loc.trunk is backbone.trunk  # not a ResNet50: no folded copy, the caller's own module runs
    emb = loc.embed(textured_image)
    again = loc.embed_arrays([textured_image])[0]
    assert [m.training for m in backbone.modules()] == flags
    assert all(torch.equal(stats[k], v) for k, v in backbone.state_dict().items())  # statistics not updated
    backbone.eval()
    expected = loc.embed(textured_image)
    torch.testing.assert_close(emb.features, expected.features, rtol=0, atol=0)
    torch.testing.assert_close(again.features, expected.features)
    assert loc.localize(emb).box == loc.localize(expected).box


def test_an_image_prepared_for_another_stride_is_refused(localizer, textured_image):
    from dataclasses import replace

    from discovery.localizer import Embedding

    emb = localizer.embed(textured_image)
    with pytest.raises(ValueError, match="stride 8"):
        localizer.localize(Embedding(replace(emb.image, stride=8), emb.features))
