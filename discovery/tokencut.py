"""TokenCut (Wang et al., 2022) on a feature map: a Normalized Cut of the token graph → box.

Follows YangtaoWANG95/TokenCut's ``object_discovery.ncut`` (docs/protocol.md, TokenCut): tokens are
the cells of a ``(C, h, w)`` map, L2-normalised; ``A = F Fᵀ`` binarised to 1 where ``A > τ`` and ε
elsewhere; the second-smallest eigenvector ``v`` of ``(D − A) v = λ D v``; bipartition ``v > mean(v)``
on the side of the seed ``argmax |v|``; the seed's 4-connected component; LOST's box.

The generalised problem is solved exactly in its symmetric normalised form
``D^-1/2 (D − A) D^-1/2 u = λ u`` (``torch.linalg.eigh`` in float64, batched), ``v = D^-1/2 u``,
which has the reference's scale ``vᵀ D v = 1`` (on the CPU only the three smallest eigenpairs are
computed, see :func:`fiedler_vectors`). Where the reference's result is decided by its
solver we define it (the degenerate rule, docs/protocol.md): within :data:`EIGENVALUE_TOL` of the
second-smallest eigenvalue the whole eigenspace is kept and ``u`` is the projection of the first
token's indicator (in index order) whose projection has squared norm ≥ 1/N; the seed is the first
token within :data:`RELATIVE_TOL` of ``max |v|``, ``v`` is signed so that ``v[seed] > 0``, and
tokens within that tolerance of the mean are outside the bipartition.
``localize`` is the batch-of-one case of ``localize_batch``, so both give identical boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import scipy.linalg
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from .defaults import DEFAULT_TAU
from .geometry import ImageGeometry
from .lost import mask_to_box, seed_component

#: TokenCut's non-edge weight ε (``main_tokencut.py``'s default; τ's is :data:`~discovery.defaults.DEFAULT_TAU`).
DEFAULT_EPS = 1e-5
#: Eigenvalues (of the normalised Laplacian, all in [0, 2]) this close to the second-smallest are
#: taken as equal to it: far above float64 eigh's error (~N · 1e-16), far below the gaps ε creates.
EIGENVALUE_TOL = 1e-9
#: Values of ``v`` closer than this fraction of ``max |v|`` are rounding apart, not ordered: the
#: lowest index wins a tie for the seed, and a token at the mean is outside the bipartition.
RELATIVE_TOL = 1e-9


@dataclass(frozen=True, eq=False)
class TokenCutResult:
    """One image's TokenCut output.

    Attributes:
        box: ``(x1, y1, x2, y2)`` float pixels of the (unpadded) input, right/bottom exclusive.
        seed: ``(row, col)`` of the seed (the token of largest ``|v|``) on the feature grid.
        mask: ``(h, w)`` bool tensor, the 4-connected component of the bipartition holding the seed.
        eigenvector: ``(h, w)`` float64 tensor, the generalised eigenvector ``v`` (``vᵀ D v = 1``),
            signed so that the seed's value is positive.
    """

    box: tuple[float, float, float, float]
    seed: tuple[int, int]
    mask: torch.Tensor
    eigenvector: torch.Tensor


def token_graph(features: torch.Tensor, tau: float = DEFAULT_TAU, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``(B, C, h, w)`` features → ``(B, N, N)`` float64 graph: 1 where the cosine similarity of two
    tokens (float32, as the reference) exceeds ``tau``, ``eps`` elsewhere (self-loops included)."""
    tokens = F.normalize(features.float().flatten(2).transpose(1, 2), p=2, dim=2)  # (B, N, d)
    similarity = torch.bmm(tokens, tokens.transpose(1, 2))
    edge = torch.ones((), dtype=torch.float64, device=features.device)
    return torch.where(similarity > tau, edge, edge * eps)


def fiedler_vectors(graph: torch.Tensor) -> torch.Tensor:
    """``(B, N, N)`` graphs → ``(B, N)`` second-smallest generalised eigenvectors of ``(D − A, D)``,
    with ``vᵀ D v = 1`` (sign not yet fixed); the degenerate rule of the module's docstring decides
    which vector of a repeated eigenvalue's eigenspace. ``N = 1`` has none: zeros.

    On the CPU each graph's three smallest eigenpairs come from LAPACK's ``syevr`` (scipy), a
    third of a full ``eigh``'s time at VOC sizes; only where the third eigenvalue is within
    :data:`EIGENVALUE_TOL` of the second (the eigenspace may be larger) does the full solve decide."""
    batch, n, _ = graph.shape
    if n == 1:
        return torch.zeros(batch, 1, dtype=torch.float64, device=graph.device)
    inv_sqrt_degree = graph.sum(dim=2).rsqrt()  # (B, N)
    laplacian = -graph * inv_sqrt_degree[:, :, None] * inv_sqrt_degree[:, None, :]
    laplacian.diagonal(dim1=1, dim2=2).add_(1.0)
    if graph.device.type != "cpu" or n < 3:
        return _eigenspace_vectors(laplacian) * inv_sqrt_degree
    units = []
    # one BLAS thread: scipy's OpenBLAS threads spin after a call and slow the next forward pass
    # (measured: +50 ms on a 260 ms ViT-S/16 forward, 2 cores), which costs more than they save here
    with threadpool_limits(limits=1, user_api="blas"):
        for matrix in laplacian:
            values, vectors = scipy.linalg.eigh(matrix.numpy(), subset_by_index=[0, 2], driver="evr")
            if values[2] - values[1] <= EIGENVALUE_TOL:
                units.append(_eigenspace_vectors(matrix[None])[0])
            else:  # a simple eigenvalue: its unit eigenvector is the rule's vector up to sign
                units.append(torch.from_numpy(vectors[:, 1]))
    return torch.stack(units) * inv_sqrt_degree


def _eigenspace_vectors(laplacian: torch.Tensor) -> torch.Tensor:
    """``(B, N, N)`` normalised Laplacians → ``(B, N)`` unit vectors ``u`` of the degenerate rule, by a full ``eigh``."""
    batch, n, _ = laplacian.shape
    eigenvalues, eigenvectors = torch.linalg.eigh(laplacian)  # ascending; columns are eigenvectors
    index = torch.arange(n, device=laplacian.device)
    in_space = (index >= 1) & ((eigenvalues - eigenvalues[:, 1:2]).abs() <= EIGENVALUE_TOL)  # (B, N)
    # The projector P onto that eigenspace does not depend on the basis eigh picked within it:
    # diag(P)[j] = ||P e_j||², and P e_j is column j of U diag(in_space) Uᵀ.
    kept = eigenvectors * in_space[:, None, :]
    squared_norms = (kept * eigenvectors).sum(dim=2)  # (B, N)
    # they sum to the eigenspace's dimension (≥ 1), so at least one is ≥ 1/N
    first = torch.argmax((squared_norms >= 1.0 / n).to(torch.uint8), dim=1)  # the lowest such index
    rows = torch.arange(batch, device=laplacian.device)
    column = torch.bmm(kept, eigenvectors[rows, first][:, :, None])[:, :, 0]  # P e_first, (B, N)
    return column / squared_norms[rows, first].sqrt()[:, None]


@torch.no_grad()
def localize_batch(
    features: torch.Tensor,
    image_sizes: Sequence[tuple[int, int]],
    stride: int = 16,
    tau: float = DEFAULT_TAU,
    eps: float = DEFAULT_EPS,
) -> list[TokenCutResult]:
    """TokenCut on a batch of same-shaped feature maps.

    Args:
        features: ``(B, C, h, w)`` backbone features (tokens = cells), any float dtype; similarities in
            float32, the eigenproblem in float64.
        image_sizes: per item, the unpadded ``(H, W)`` in pixels, for clipping.
        stride: pixels per feature cell (the reference's patch size).
        tau: similarity above which two tokens are joined by a weight-1 edge.
        eps: weight of every other pair (> 0, which keeps the graph connected).
    """
    batch, _, h, w = features.shape
    if len(image_sizes) != batch:
        raise ValueError(f"{batch} feature maps but {len(image_sizes)} image sizes")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    for height, width in image_sizes:
        if (h - 1) * stride >= height or (w - 1) * stride >= width:
            raise ValueError(f"a {h}x{w} feature map at stride {stride} has cells outside a {height}x{width} image")
    vectors = fiedler_vectors(token_graph(features, tau, eps))  # (B, N)
    magnitude = vectors.abs()
    peak = magnitude.amax(dim=1, keepdim=True)
    tolerance = peak * RELATIVE_TOL
    seeds = torch.argmax((magnitude >= peak - tolerance).to(torch.uint8), dim=1)  # the lowest index of a tie
    rows = torch.arange(batch, device=features.device)
    vectors = vectors * torch.sign(vectors[rows, seeds])[:, None]
    above = vectors > vectors.mean(dim=1, keepdim=True) + tolerance
    bipartitions = above.reshape(batch, h, w).cpu().numpy()
    eigenvector_maps = vectors.reshape(batch, h, w).cpu()
    seed_list = seeds.tolist()
    results = []
    for i in range(batch):
        seed = divmod(int(seed_list[i]), w)
        mask = seed_component(bipartitions[i], seed)
        box = mask_to_box(mask, ImageGeometry.at_stride(image_sizes[i], stride))
        results.append(TokenCutResult(box, seed, torch.from_numpy(mask), eigenvector_maps[i]))
    return results


def localize(
    features: torch.Tensor,
    image_size: tuple[int, int],
    stride: int = 16,
    tau: float = DEFAULT_TAU,
    eps: float = DEFAULT_EPS,
) -> TokenCutResult:
    """TokenCut on one feature map ``(C, h, w)``; see :func:`localize_batch` for the arguments."""
    if features.dim() != 3:
        raise ValueError(f"features must be (C, h, w), got shape {tuple(features.shape)}")
    return localize_batch(features[None], [image_size], stride=stride, tau=tau, eps=eps)[0]
