"""A faithful re-creation of the TokenCut reference (YangtaoWANG95/TokenCut at fed52cd,
``object_discovery.py``: ``ncut`` and ``detect_box``; ``main_tokencut.py``'s τ = 0.2, ε = 1e-5,
``scales = [patch_size, patch_size]``), rewritten here as the oracle ``discovery.tokencut`` must equal.

What it keeps from the reference: the first token is taken as the class token and dropped, torch
``F.normalize`` and the float32 product, the numpy binarisation, ``scipy.linalg.eigh(D - A, D,
subset_by_index=[1, 2])``, the mean threshold, the ``argmax |v|`` seed and the flip, per-image
``scipy.ndimage.label``. What it leaves out: the visualisations and the unused ``no_binary_graph``
ablation. It shares no code with ``discovery``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.linalg import eigh


def reference_ncut(feats: torch.Tensor, dims: tuple[int, int], scales: tuple[float, float],
                   init_image_size: tuple[int, int, int], tau: float = 0.2, eps: float = 1e-5):
    """``feats``: ``(1, 1 + N, d)`` (class token first) → ``(pred, mask, seed, eigenvec, eigenvalues)``.

    ``pred`` is ``[x1, y1, x2, y2]``; ``mask`` the ``dims``-shaped float 0/1 map of the seed's
    component; ``seed`` the flat index; ``eigenvec`` the flipped second eigenvector, shaped ``dims``;
    ``eigenvalues`` the two eigenvalues ``eigh`` returned (the second and third smallest).
    ``init_image_size`` is the image tensor's ``(C, H, W)`` as the reference passes it.
    """
    feats = feats[0, 1:, :]
    feats = F.normalize(feats, p=2)
    A = feats @ feats.transpose(1, 0)
    A = A.cpu().numpy()
    A = A > tau
    A = np.where(A.astype(float) == 0, eps, A)
    d_i = np.sum(A, axis=1)
    D = np.diag(d_i)

    eigenvalues, eigenvectors = eigh(D - A, D, subset_by_index=[1, 2])
    eigenvec = np.copy(eigenvectors[:, 0])

    second_smallest_vec = eigenvectors[:, 0]
    avg = np.sum(second_smallest_vec) / len(second_smallest_vec)
    bipartition = second_smallest_vec > avg

    seed = np.argmax(np.abs(second_smallest_vec))

    if bipartition[seed] != 1:
        eigenvec = eigenvec * -1
        bipartition = np.logical_not(bipartition)
    bipartition = bipartition.reshape(dims).astype(float)

    pred, cc = reference_detect_box(bipartition, seed, dims, scales, init_image_size[1:])
    mask = np.zeros(dims)
    mask[cc[0], cc[1]] = 1
    return np.asarray(pred), mask, int(seed), eigenvec.reshape(dims), eigenvalues


def reference_detect_box(bipartition: np.ndarray, seed: int, dims: tuple[int, int],
                         scales: tuple[float, float], initial_im_size: tuple[int, int]):
    """The seed's ``ndimage.label`` component of ``bipartition`` → ``(pred, np.where of the component)``."""
    objects, _ = ndimage.label(bipartition)
    cc = objects[np.unravel_index(seed, dims)]
    mask = np.where(objects == cc)
    ymin, ymax = min(mask[0]), max(mask[0]) + 1
    xmin, xmax = min(mask[1]), max(mask[1]) + 1
    r_xmin, r_xmax = scales[1] * xmin, scales[1] * xmax
    r_ymin, r_ymax = scales[0] * ymin, scales[0] * ymax
    pred = [r_xmin, r_ymin, r_xmax, r_ymax]
    if initial_im_size:
        pred[2] = min(pred[2], initial_im_size[1])
        pred[3] = min(pred[3], initial_im_size[0])
    return pred, mask


#: closer than this (eigenvalue gap; |v| or distance to the mean relative to max |v|), the
#: reference's answer is decided by its solver's rounding, not by the features
UNDEFINED = 1e-7


def ncut_defined(feats: torch.Tensor, dims: tuple[int, int], tau: float = 0.2) -> bool:
    """Whether :func:`reference_ncut`'s answer on ``feats`` ``(1, 1 + N, d)`` is decided by the
    features: no similarity at τ (float32 rounding), a clear eigengap, seed and mean split."""
    tokens = F.normalize(feats[0, 1:].double(), dim=1)
    if ((tokens @ tokens.T) - tau).abs().min() < 1e-6:
        return False
    _, _, _, vector, eigenvalues = reference_ncut(feats, dims, (1.0, 1.0), (3, *dims), tau)
    magnitude = np.sort(np.abs(vector).ravel())
    peak = magnitude[-1]
    return bool(eigenvalues[1] - eigenvalues[0] > UNDEFINED and magnitude[-1] - magnitude[-2] > UNDEFINED * peak
                and np.abs(vector - vector.mean()).min() > UNDEFINED * peak)
