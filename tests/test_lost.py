"""LOST on synthetic feature maps: planted objects, exclusive edges, clipping, tie rule, batching,
and agreement with a line-by-line re-creation of the reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.reference import layernorm_features, reference_lost
from discovery.lost import localize, localize_batch

BACKGROUND = torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0])
OBJECT = torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1])


def planted(h: int, w: int, rows: slice, cols: slice, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """(8, h, w) features: background vector everywhere, object vector in ``rows × cols``."""
    feats = BACKGROUND[:, None, None].repeat(1, h, w)
    feats[:, rows, cols] = OBJECT[:, None, None]
    if noise:
        gen = torch.Generator().manual_seed(seed)
        feats = feats + noise * torch.rand(feats.shape, generator=gen)
    return feats


def reference_box(feats_chw: torch.Tensor, image_size: tuple[int, int], stride: int, k: int):
    """The reference's box and degree for one ``(C, h, w)`` feature map."""
    _, h, w = feats_chw.shape
    feats = layernorm_features(feats_chw[None])
    return reference_lost(feats, (h, w), (float(stride), float(stride)), image_size, k)[:2]


def test_planted_object_box_has_exclusive_edges():
    res = localize(planted(10, 12, slice(3, 6), slice(4, 8)), image_size=(160, 192), stride=16)
    assert res.box == (64.0, 48.0, 128.0, 96.0)
    assert res.mask.dtype == torch.bool and res.mask.shape == (10, 12)
    assert res.mask.sum() == 12 and res.mask[3:6, 4:8].all()
    assert res.degree.shape == (10, 12)
    assert int(res.degree[4, 5]) == 11  # each object patch: 11 other object patches
    assert int(res.degree[0, 0]) == 120 - 12 - 1


def test_tie_broken_by_ascending_patch_index():
    # all twelve object patches share the lowest degree: the first in row-major order wins
    res = localize(planted(10, 12, slice(3, 6), slice(4, 8)), image_size=(160, 192), stride=16)
    assert res.seed == (3, 4)


def test_box_is_clipped_to_unpadded_image():
    feats = planted(10, 12, slice(7, 10), slice(9, 12))
    res = localize(feats, image_size=(150, 181), stride=16)
    assert res.box == (144.0, 112.0, 181.0, 150.0)


def test_stride_scales_box():
    res = localize(planted(10, 12, slice(3, 6), slice(4, 8)), image_size=(80, 96), stride=8)
    assert res.box == (32.0, 24.0, 64.0, 48.0)


def test_k_limits_the_expansion():
    # two separate objects of equal vector: with k=1 only the seed expands, M still covers both,
    # and the seed's 4-connected component is the first object alone
    feats = planted(10, 12, slice(1, 3), slice(1, 3))
    feats[:, 6:8, 8:10] = OBJECT[:, None, None]
    res = localize(feats, image_size=(160, 192), stride=16, k=1)
    assert res.seed == (1, 1)
    assert res.box == (16.0, 16.0, 48.0, 48.0)


def test_constant_features_give_a_valid_box_without_nan():
    res = localize(torch.ones(16, 4, 5), image_size=(64, 80), stride=16)
    assert res.seed == (0, 0)
    assert res.box == (0.0, 0.0, 16.0, 16.0)
    assert not torch.isnan(res.degree.float()).any()


def test_single_cell_feature_map_covers_the_whole_tiny_image():
    res = localize(torch.rand(32, 1, 1), image_size=(1, 1), stride=16)
    assert res.box == (0.0, 0.0, 1.0, 1.0)


def test_k_larger_than_patch_count():
    res = localize(planted(3, 3, slice(0, 1), slice(0, 1), noise=0.1), image_size=(48, 48), k=1000)
    x1, y1, x2, y2 = res.box
    assert 0 <= x1 < x2 <= 48 and 0 <= y1 < y2 <= 48


def test_batched_equals_single():
    gen = torch.Generator().manual_seed(1)
    feats = torch.relu(torch.randn(4, 64, 9, 11, generator=gen))
    sizes = [(144, 176), (140, 170), (129, 161), (144, 176)]
    batched = localize_batch(feats, sizes, stride=16, k=20)
    for f, size, res in zip(feats, sizes, batched):
        single = localize(f, image_size=size, stride=16, k=20)
        assert single.box == res.box and single.seed == res.seed
        assert torch.equal(single.degree, res.degree) and torch.equal(single.mask, res.mask)


def _structured(seed: int) -> torch.Tensor:
    """Post-ReLU-like features with a few blob-shaped components, as a backbone gives."""
    gen = torch.Generator().manual_seed(seed)
    h, w, c = 12, 16, 48
    basis = torch.relu(torch.randn(4, c, generator=gen))
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    weights = []
    for _ in range(4):
        cy, cx = torch.rand(2, generator=gen) * torch.tensor([h, w])
        weights.append(torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2)))
    maps = torch.stack(weights)  # (4, h, w)
    feats = torch.einsum("kc,khw->chw", basis, maps)
    return torch.relu(feats + 0.3 * torch.randn(c, h, w, generator=gen))


def test_matches_reference_where_the_reference_has_no_ties():
    compared = 0
    for seed in range(40):
        feats = _structured(seed)
        size = (190, 250)
        ref_box, ref_degree = reference_box(feats, size, stride=16, k=100)
        deg = np.sort(ref_degree.numpy())
        if deg[0] == deg[1] or deg[99] == deg[100]:
            continue  # the reference's order is undefined here
        res = localize(feats, image_size=size, stride=16, k=100)
        assert torch.equal(res.degree.flatten(), ref_degree.long())
        assert res.box == tuple(ref_box), f"seed {seed}"
        compared += 1
    assert compared >= 10


def test_feature_cells_outside_the_image_are_refused():
    with pytest.raises(ValueError, match="cells outside"):
        localize(torch.rand(8, 4, 4), image_size=(17, 32), stride=8)  # row 3 would start at y = 24 > 17
