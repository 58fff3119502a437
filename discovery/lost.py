"""LOST (Siméoni et al., 2021) on a feature map: degree → seed → expansion → box.

Follows valeoai/LOST step by step (docs/protocol.md): its ResNet50 path standardises the features
first (``standardize=True``), its ViT path uses the keys as they are (``standardize=False``). The one
deliberate difference is that ties in degree are broken by ascending patch index (the reference's
argsort leaves it open).
``localize`` is the batch-of-one case of ``localize_batch``, so both give identical boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from . import onednn
from .defaults import DEFAULT_K
from .geometry import ImageGeometry


@dataclass(frozen=True, eq=False)
class LostResult:
    """One image's LOST output.

    Attributes:
        box: ``(x1, y1, x2, y2)`` float pixels of the (unpadded) input, right/bottom exclusive.
        seed: ``(row, col)`` of the seed on the feature grid.
        degree: ``(h, w)`` int64 tensor, per patch the number of other patches with positive affinity.
        mask: ``(h, w)`` bool tensor, the 4-connected component of ``M > 0`` holding the seed.
    """

    box: tuple[float, float, float, float]
    seed: tuple[int, int]
    degree: torch.Tensor
    mask: torch.Tensor


def seed_component(positive: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The 4-connected component of ``positive`` (``(h, w)`` bool) that holds ``seed``.

    A seed outside ``positive`` happens only for degenerate features (all equal: every affinity
    is 0); the reference raises there, we return the seed's own cell so a box always exists.
    """
    if not positive[seed]:
        mask = np.zeros_like(positive)
        mask[seed] = True
        return mask
    _, labels = cv2.connectedComponents(positive.astype(np.uint8), connectivity=4)
    return labels == labels[seed]


def mask_to_box(mask: np.ndarray, geometry: ImageGeometry) -> tuple[float, float, float, float]:
    """Feature-grid mask → ``(x1, y1, x2, y2)`` pixels of ``geometry``'s resized image, exclusive edges, clipped to it."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return geometry.cells_to_box((int(rows[0]), int(cols[0])), (int(rows[-1]), int(cols[-1])))


@torch.no_grad()
def localize_batch(
    features: torch.Tensor,
    image_sizes: Sequence[tuple[int, int]],
    stride: int = 16,
    k: int = DEFAULT_K,
    standardize: bool = True,
) -> list[LostResult]:
    """LOST on a batch of same-shaped feature maps.

    Args:
        features: ``(B, C, h, w)`` raw backbone features (before standardisation), any float dtype;
            computed in float32.
        image_sizes: per item, the unpadded ``(H, W)`` in pixels, for clipping.
        stride: pixels per feature cell before clipping (the scale ``s`` of docs/protocol.md, LOST step 8:
            padded size / feature size, which equals the stride with our padding).
        k: number of lowest-degree patches considered for the expansion.
        standardize: LOST's global standardisation first (its ResNet50 path); ``False``: the
            affinity of the raw features (its ViT path, on keys).
    """
    batch, channels, h, w = features.shape
    if len(image_sizes) != batch:
        raise ValueError(f"{batch} feature maps but {len(image_sizes)} image sizes")
    for height, width in image_sizes:
        if (h - 1) * stride >= height or (w - 1) * stride >= width:
            raise ValueError(f"a {h}x{w} feature map at stride {stride} has cells outside a {height}x{width} image")
    n = h * w
    # LOST standardises globally, (F - mean) / sqrt(var + eps), then takes A = F Fᵀ. Every later
    # step reads only signs of A or of sums of its rows, which the positive factor 1/(var + eps)
    # leaves unchanged: centring alone gives the same degrees, seed, mask and box, one pass cheaper.
    feats = features.float().flatten(2).transpose(1, 2)  # (B, N, d)
    if standardize:
        feats = feats - feats.mean(dim=(1, 2), keepdim=True)
    feats = feats.contiguous()  # no copy for channels-last input
    # (B, N, N), LOST's A (times var + eps when standardised); on the CPU through oneDNN, ≈ 2× MKL here
    if onednn.usable(feats):
        affinity = torch.stack([onednn.linear(f, f) for f in feats])
    else:
        affinity = torch.bmm(feats, feats.transpose(1, 2))
    positive = affinity > 0
    diagonal = torch.diagonal(positive, dim1=1, dim2=2)
    degree = positive.sum(dim=2) - diagonal.long()  # (B, N)
    order = torch.sort(degree, dim=1, stable=True).indices  # ties: ascending patch index
    potentials = order[:, : min(k, n)]  # (B, k)
    seeds = potentials[:, 0]
    rows = torch.arange(batch, device=features.device)
    seed_rows = affinity[rows, seeds]  # (B, N)
    keep = torch.gather(seed_rows, 1, potentials) > 0
    keep[:, 0] = True  # the seed is always part of its expansion
    # M = Σ_j A[j, :] over the kept potentials: a (1, k) × (k, N) product per image.
    selected = torch.gather(affinity, 1, potentials[:, :, None].expand(-1, -1, n))  # (B, k, N)
    similarity = torch.bmm(keep.float()[:, None, :], selected)[:, 0]  # (B, N)

    positive_m = (similarity > 0).reshape(batch, h, w).cpu().numpy()
    degree_maps = degree.reshape(batch, h, w).cpu()
    seed_list = seeds.tolist()  # one device-to-host copy, not one per image
    results = []
    for i in range(batch):
        seed = divmod(int(seed_list[i]), w)
        mask = seed_component(positive_m[i], seed)
        box = mask_to_box(mask, ImageGeometry.at_stride(image_sizes[i], stride))
        results.append(LostResult(box, seed, degree_maps[i], torch.from_numpy(mask)))
    return results


def localize(
    features: torch.Tensor, image_size: tuple[int, int], stride: int = 16, k: int = DEFAULT_K, standardize: bool = True,
) -> LostResult:
    """LOST on one feature map ``(C, h, w)``; see :func:`localize_batch` for the arguments."""
    if features.dim() != 3:
        raise ValueError(f"features must be (C, h, w), got shape {tuple(features.shape)}")
    return localize_batch(features[None], [image_size], stride=stride, k=k, standardize=standardize)[0]
