"""normalize_and_pad_batch: uint8 in, the same normalised zero-padded tensors as normalize_and_pad, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from discovery.images import normalize_and_pad, normalize_and_pad_batch
from discovery.weights import IMAGENET_MEAN, IMAGENET_STD


def _images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_list_batch_is_bit_identical_to_one_image_at_a_time(stride):
    sizes = [(375, 500), (370, 497), (369, 500), (375, 498)]  # one padded size at strides 8, 16 and 32
    images = _images(sizes)
    batch = normalize_and_pad_batch(images, IMAGENET_MEAN, IMAGENET_STD, stride)
    assert batch.dtype == torch.float32 and batch.shape[0] == len(images)
    for got, rgb in zip(batch, images):
        want = normalize_and_pad(rgb, IMAGENET_MEAN, IMAGENET_STD, stride)
        assert got.shape == want.shape
        assert torch.equal(got, want)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))  # +0.0 padding, not -0.0


def test_tensor_batch_pads_after_normalising():
    images = _images([(50, 70)] * 3, seed=1)
    stacked = torch.from_numpy(np.stack(images))
    batch = normalize_and_pad_batch(stacked, IMAGENET_MEAN, IMAGENET_STD, 16)
    assert batch.shape == (3, 3, 64, 80)
    for got, rgb in zip(batch, images):
        assert torch.equal(got, normalize_and_pad(rgb, IMAGENET_MEAN, IMAGENET_STD, 16))
    exact = torch.from_numpy(np.stack(_images([(64, 48)] * 2)))
    for got, rgb in zip(normalize_and_pad_batch(exact, IMAGENET_MEAN, IMAGENET_STD, 16), exact.numpy()):
        assert torch.equal(got, normalize_and_pad(rgb, IMAGENET_MEAN, IMAGENET_STD, 16))


def test_batch_refuses_mixed_padded_sizes_and_bad_input():
    with pytest.raises(ValueError, match="one padded size"):
        normalize_and_pad_batch(_images([(16, 16), (40, 16)]), IMAGENET_MEAN, IMAGENET_STD, 16)
    with pytest.raises(ValueError, match="at least one"):
        normalize_and_pad_batch([], IMAGENET_MEAN, IMAGENET_STD, 16)
    with pytest.raises(ValueError, match="uint8"):
        normalize_and_pad_batch([np.zeros((16, 16, 3), np.float32)], IMAGENET_MEAN, IMAGENET_STD, 16)
    with pytest.raises(ValueError, match="uint8"):
        normalize_and_pad_batch(torch.zeros(1, 16, 16, 3), IMAGENET_MEAN, IMAGENET_STD, 16)


def test_embed_arrays_equals_embed_batch(random_backbone):
    from discovery.images import PreparedImage
    from discovery.localizer import Localizer

    images = _images([(70, 90), (66, 96), (80, 81)], seed=2)  # one padded size: 80 x 96
    loc = Localizer(random_backbone, max_side=None)
    ours = loc.embed_arrays(images)
    prepared = [PreparedImage(normalize_and_pad(a, loc.backbone.mean, loc.backbone.std, 16), a.shape[:2], a.shape[:2], a)
                for a in images]
    theirs = loc.embed_batch(prepared)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.image.tensor, b.image.tensor) and a.image.size == b.image.size
        assert torch.equal(a.features, b.features)
    assert [r.box for r in loc.localize(ours)] == [r.box for r in loc.localize(theirs)]
