"""A faithful re-creation of the LOST reference's ResNet50 evaluation loop (valeoai/LOST
``main_lost.py`` + ``object_discovery.py``), rewritten here, used as the baseline to beat and as the
oracle our boxes must equal.

What it keeps from the reference: batch 1, NCHW fp32 under ``torch.no_grad``, a fresh
``nn.LayerNorm((N, d))`` per image, ``argsort`` of the negated degree, per-image ``scipy.ndimage``
labelling, no DataLoader workers. What it leaves out: ``.cuda()`` (device is a parameter).
Ties in the degree order are left to ``argsort`` as in the reference; callers compare only where
that order is defined.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.ndimage
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

#: the normalisation both references use (torchvision's ImageNet mean and std)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def reference_lost(feats: torch.Tensor, dims: tuple[int, int], scales: tuple[float, float],
                   init_image_size: tuple[int, int], k_patches: int = 100):
    """``feats``: ``(1, N, d)`` after the reference's LayerNorm → ``(box, degree, seed)``.

    ``box`` is ``[x1, y1, x2, y2]`` floats; ``degree`` the ``(N,)`` degree the reference sorts by.
    """
    A = (feats @ feats.transpose(1, 2)).squeeze(0)
    scored = A.clone()
    scored.fill_diagonal_(0)
    scored[scored < 0] = 0
    cent = -torch.sum(scored > 0, dim=1).type(torch.float32)
    sorted_patches = torch.argsort(cent, descending=True)
    seed = sorted_patches[0]
    potentials = sorted_patches[:k_patches]
    similars = potentials[A[seed, potentials] > 0.0]
    M = torch.sum(A[similars, :], dim=0)
    h, w = dims
    labeled, _ = scipy.ndimage.label((M > 0.0).reshape(h, w).cpu().numpy().astype(float))
    cc = labeled[np.unravel_index(seed.cpu().numpy(), (h, w))]
    if cc == 0:
        raise ValueError("The seed is in the background component.")
    mask = np.where(labeled == cc)
    ymin, ymax = min(mask[0]), max(mask[0]) + 1
    xmin, xmax = min(mask[1]), max(mask[1]) + 1
    box = [scales[1] * xmin, scales[0] * ymin, scales[1] * xmax, scales[0] * ymax]
    box[2] = min(box[2], init_image_size[1])
    box[3] = min(box[3], init_image_size[0])
    return [float(v) for v in box], -cent, int(seed)


def order_defined(feats: torch.Tensor, dims: tuple[int, int], k_patches: int = 100) -> bool:
    """Whether :func:`reference_lost`'s box on ``feats`` ``(1, N, d)`` cannot depend on how its
    sort orders equal degrees: one seed, and either no tie at the k-th candidate or no tied
    candidate that the seed's row would add to the expansion."""
    _, degree, seed = reference_lost(feats, dims, (1.0, 1.0), dims, k_patches)
    degree = degree.numpy()
    order = np.sort(degree)
    if order[0] == order[1]:
        return False
    if k_patches >= len(degree):
        return True
    boundary = order[k_patches - 1]
    tied = np.flatnonzero(degree == boundary)
    taken = k_patches - int((degree < boundary).sum())
    similarity = (feats @ feats.transpose(1, 2))[0]
    return taken == len(tied) or not bool((similarity[seed, torch.from_numpy(tied)] > 0).any())


def layernorm_features(x: torch.Tensor) -> torch.Tensor:
    """``(1, d, h, w)`` backbone output → ``(1, N, d)`` through a fresh ``LayerNorm((N, d))``."""
    d = x.shape[1]
    feats = x.reshape((1, d, -1)).transpose(2, 1)
    return nn.LayerNorm(feats.size()[1:]).to(x.device)(feats)


def load_padded(path: Path, mean, std, patch_size: int) -> tuple[torch.Tensor, torch.Size]:
    """The reference's image: ``ToTensor``, ``Normalize``, zeros bottom/right to a multiple of
    ``patch_size``; ``(padded (3, H', W'), the unpadded shape)``."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    with open(path, "rb") as fh:
        img = transform(Image.open(fh).convert("RGB"))
    init_image_size = img.shape
    size_im = (
        img.shape[0],
        int(np.ceil(img.shape[1] / patch_size) * patch_size),
        int(np.ceil(img.shape[2] / patch_size) * patch_size),
    )
    padded = torch.zeros(size_im)
    padded[:, : img.shape[1], : img.shape[2]] = img
    return padded, init_image_size


def reference_loop(paths: Sequence[Path], trunk: nn.Module, mean, std, k: int = 100,
                   device: str = "cpu", patch_size: int = 16) -> list[list[float]]:
    """Box per image, one image at a time, exactly as the reference's evaluation loop runs."""
    trunk = trunk.to(device).eval()
    boxes = []
    for path in paths:
        img, init_image_size = load_padded(path, mean, std, patch_size)
        img = img.to(device)
        with torch.no_grad():
            x = trunk(img[None, :, :, :])
            feats = layernorm_features(x)
            scales = (float(img.shape[1]) / x.shape[2], float(img.shape[2]) / x.shape[3])
            box, _, _ = reference_lost(feats, (x.shape[2], x.shape[3]), scales, init_image_size[1:], k)
        boxes.append(box)
    return boxes
