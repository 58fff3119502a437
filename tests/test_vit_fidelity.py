"""Our ViT path's boxes equal line-by-line re-creations of the references' loops
(bench/reference_vit.py: LOST's ``main_lost.py`` on keys, TokenCut's ``main_tokencut.py``) through
``eval run`` on a seeded random ViT-S/16 and VOC-sized images, on every image whose answer the
reference defines (no tie its sort or its solver would break)."""

from __future__ import annotations

import json

import pytest
import torch

from bench.data import make_voc
from bench.reference import order_defined
from bench.reference_tokencut import ncut_defined
from bench.reference_vit import reference_keys, reference_vit_loop
from discovery.backbones import load_backbone
from discovery.eval.run_options import RunOptions
from discovery.eval.runner import run

N_IMAGES = 10


@pytest.fixture(scope="module")
def vit_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit-voc")
    paths = make_voc(root, N_IMAGES)
    net = load_backbone("random-vits16").trunk.net
    return root, paths, net, list(reference_keys(paths, net))


def _eval_boxes(root, out, method: str, batch_size: int, k: int) -> dict:
    run(RunOptions(dataset="voc07", root=root, backbone="random-vits16", method=method, out=out, batch_size=batch_size,
                   workers=0, progress=False, k=k))
    return {r["image_id"]: r["box"] for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}


# Integer degrees of ~768 random keys tie often: at LOST's k = 100 the reference's own order is
# defined on few images, so k = 1000 (every cell a candidate: only the seed can tie) is run too.
def _defined(method: str, keys: torch.Tensor, dims: tuple[int, int], k: int) -> bool:
    return order_defined(keys[:, 1:], dims, k) if method == "lost" else ncut_defined(keys, dims)


@pytest.mark.parametrize(("method", "batch_size", "k", "least"), [
    ("lost", 1, 100, 2), ("lost", 4, 1000, 5), ("tokencut", 4, 100, 5),
])
def test_vit_boxes_equal_the_reference_loops(vit_data, tmp_path, method, batch_size, k, least):
    root, paths, net, keys = vit_data
    reference, _ = reference_vit_loop(paths, net, method, k_patches=k)
    ours = _eval_boxes(root, tmp_path / method, method, batch_size, k)
    compared = 0
    for path, box, (key, dims, _) in zip(paths, reference, keys):
        if not _defined(method, key, dims, k):
            continue
        assert ours[path.stem] == [round(v, 2) for v in box], path.stem
        compared += 1
    assert compared >= least
    assert len({tuple(b) for b in reference}) > 1  # not every box the whole image


def test_reference_position_embeddings_are_ours(vit_data):
    # the re-created DINO forward and our trunk see the same stream entering the first block
    from bench.reference_vit import prepare_tokens
    from discovery.vit import ViTTrunk

    _, _, net, _ = vit_data
    x = torch.randn(1, 3, 12 * 16, 20 * 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, grid = ViTTrunk(net).embed(x)
        torch.testing.assert_close(ours, prepare_tokens(net, x), rtol=0, atol=1e-6)
    assert grid == (12, 20)


def test_the_definedness_predicates_see_ties():
    # two cells of degree 0 (opposite vectors): the seed is the sort's choice
    assert not order_defined(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])[None], (1, 4), k_patches=4)
    assert order_defined(torch.tensor([[1.0, 0.0], [0.5, 1.0], [0.0, 1.0], [-0.2, 1.0]])[None], (1, 4), k_patches=4)
    # a similarity exactly at τ
    at_tau = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.2, (1 - 0.04) ** 0.5], [0.0, 1.0]])[None]
    assert not ncut_defined(at_tau, (1, 3))
