"""Saliency maps on the backbone's feature map (layer4 for the ResNet50s): Grad-CAM and EigenCAM, and CAM → box (the sanity check is :mod:`discovery.sanity`).

``Explainer(localizer)`` reuses a :class:`~discovery.localizer.Localizer`'s backbone. Its query,
:meth:`Explainer.explain`, takes an :class:`~discovery.localizer.Embedding` (the forward pass,
``localizer.embed``, made once by the caller and shared with ``localizer.localize``); method, target
and threshold are arguments of each query. Grad-CAM's gradient only flows through the head (global
average pool + target) from the stored features, so frozen backbones work, no hooks are registered
and nothing stays attached to the model after a call; the head runs in eval mode.

Maps ignore the zero padding the backbone input carries: the feature map is cropped to the cells
whose receptive-field origin lies inside the image before any pooling, gradient or SVD.

On a ViT (:class:`~discovery.vit.ViTTrunk`) the maps are taken where pytorch-grad-cam users take them
with a hand-written ``reshape_transform``: the patch tokens at the last block's ``norm1`` (CLS and
registers removed, tokens → grid), the gradient flowing through the block's attention branch to the
head's input (the CLS token after the final norm, for DINO). That needs the tokens entering the last
block, so a ViT's explanation runs the trunk's blocks but the last once more from the embedding's image.

Targets:
- backbones with a classifier head: a class (index, or ImageNet name for 1000-way heads), default
  the top-1 prediction of the head applied to the average of the valid cells;
- headless backbones (e.g. ``dino``, a trunk with no head): the L2 norm of the globally pooled feature
  (:data:`EMBEDDING_TARGET`). Its Grad-CAM is, up to a positive factor, the dot product of each
  cell's feature with the pooled feature: the cells that dominate the global descriptor. A headless
  ViT (``dino-vits16`` ...): the L2 norm of its embedding, the CLS token after the final norm
  (:data:`VIT_EMBEDDING_TARGET`).
- EigenCAM is class-agnostic (the first principal component of the activations); it takes no target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .backbone import Backbone, eval_mode
from .classes import class_name, resolve_class
from .defaults import CAM_METHODS, DEFAULT_THRESHOLD
from .geometry import ImageGeometry
from .images import ImageInput, PreparedImage
from .localizer import Embedding, Localizer
from .vit import ViTTrunk

METHODS = CAM_METHODS

EMBEDDING_TARGET = "embedding norm (L2 norm of the pooled layer4 feature)"
VIT_EMBEDDING_TARGET = "embedding norm (L2 norm of the CLS token after the final norm)"
EIGEN_TARGET = "first principal component of layer4 activations (class-agnostic)"
VIT_EIGEN_TARGET = "first principal component of the last block's norm1 tokens (class-agnostic)"

Target = int | str | None


def upsample(raw: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
    """Bilinear ``(h, w)`` map over the padded input → ``(H, W)`` at ``geometry.size``: resize to the
    cells' pixel extent (:meth:`~discovery.geometry.ImageGeometry.map_extent`), crop the padding."""
    height, width = geometry.map_extent(raw.shape)
    up = cv2.resize(raw.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return up[: geometry.size[0], : geometry.size[1]]


def normalize(cam: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] float32 (all zeros for a constant map)."""
    cam = cam.astype(np.float32)
    low, span = float(cam.min()), float(cam.max() - cam.min())
    return (cam - low) / span if span > 0 else np.zeros_like(cam)


def cam_to_box(cam: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> tuple[float, float, float, float]:
    """Box around the largest 8-connected region of ``cam >= threshold * cam.max()``.

    Args:
        cam: ``(H, W)`` float map (any range; only its maximum matters).
        threshold: fraction of the maximum, in ``[0, 1]`` (default :data:`DEFAULT_THRESHOLD`).

    Returns:
        ``(x1, y1, x2, y2)`` float pixels of ``cam``, right/bottom exclusive (``geometry.box_to_original``
        maps them to the original image). A map with no positive value (no evidence anywhere) gives
        the whole map. Ties between equally large regions go to the one met first in row-major order.
    """
    cam = np.asarray(cam)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"cam must be a non-empty (H, W) array, got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise ValueError("cam contains NaN or infinite values")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    height, width = cam.shape
    peak = float(cam.max())
    if peak <= 0:
        return (0.0, 0.0, float(width), float(height))
    region = (cam >= threshold * peak).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # label 0 is the background
    x, y, w, h = (int(v) for v in stats[best, :4])
    return (float(x), float(y), float(x + w), float(y + h))


@dataclass(frozen=True)
class CamResult:
    """One image's saliency map.

    Attributes:
        cam: ``(H, W)`` float32 in [0, 1] at ``PreparedImage.size`` (the unpadded network input).
        raw: ``(h, w)`` float32, the map on the layer4 grid before upsampling and scaling (after
            the ReLU). Images are padded to a multiple of the stride, so every cell starts inside
            the image; the upsampled map is cropped to the image.
        target: the explained class index; ``None`` for embedding targets and EigenCAM.
        target_name: the ImageNet class name, or a description of the target.
        probability: softmax probability of ``target`` (classifier backbones, Grad-CAM), else ``None``.
        box: ``(x1, y1, x2, y2)`` float pixels of the ORIGINAL image, right/bottom exclusive
            (:func:`cam_to_box` at ``threshold``).
        embedding: the embedding explained (features detached, float32, full padded grid): with the
            image-input convenience path, ``localizer.localize(result.embedding)`` gives LOST with no
            second forward.
        method: ``"gradcam"`` or ``"eigencam"``.
        threshold: the CAM → box threshold used.
    """

    cam: np.ndarray
    raw: np.ndarray
    target: int | None
    target_name: str
    probability: float | None
    box: tuple[float, float, float, float]
    embedding: Embedding
    method: str
    threshold: float = DEFAULT_THRESHOLD

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "target": self.target,
            "target_name": self.target_name,
            "probability": None if self.probability is None else round(self.probability, 6),
            "box": [round(v, 2) for v in self.box],
        }


def eigen_projection(activations: np.ndarray) -> np.ndarray:
    """``(C, h, w)`` activations → ``(h, w)`` projection on their first principal component.

    Same computation as pytorch-grad-cam's ``get_2d_projection`` (EigenCAM): centre the ``(h·w, C)``
    matrix per channel, take ``V[0]`` of numpy's SVD and project. The sign is the one LAPACK's SVD
    returns, as in that library (its EigenCAM has no sign correction), so a map may come out
    inverted (highlighting the background); the library cross-check test pins this behaviour.
    We take the thin SVD (``full_matrices=False``): LAPACK computes the same leading vector with
    the same sign as the library's full SVD in every case we tried, at a fraction of the cost when
    there are fewer cells than channels; the cross-check test would catch a divergence.
    """
    a = np.nan_to_num(np.asarray(activations, dtype=np.float32), nan=0.0)
    flat = a.reshape(a.shape[0], -1).T
    flat = flat - flat.mean(axis=0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    return (flat @ vt[0, :]).reshape(a.shape[1:]).astype(np.float32)


class Explainer:
    """Grad-CAM / EigenCAM on a :class:`~discovery.localizer.Localizer`'s backbone.

    Args:
        localizer: supplies the backbone (frozen is fine) and, for the image-input convenience
            calls, ``prepare`` (and its ``max_side``) and the forward pass.
        threshold: the default CAM → box threshold of queries that give none, a fraction of the
            map's maximum.

    ``explainer.explain(embedding, method="gradcam", target=None, threshold=None)`` explains
    ``localizer.embed(image)`` (or a list of embeddings) with no forward pass;
    ``explainer(image, ...)`` embeds and explains one image (anything ``Localizer.prepare`` takes,
    or a :class:`PreparedImage`).
    """

    def __init__(self, localizer: Localizer, threshold: float = DEFAULT_THRESHOLD):
        if not isinstance(localizer, Localizer):
            raise TypeError(f"Explainer needs a Localizer, got {type(localizer).__name__}")
        self.localizer = localizer
        self.threshold = _checked_threshold(threshold)

    @property
    def backbone(self) -> Backbone:
        return self.localizer.backbone

    @property
    def num_classes(self) -> int | None:
        return self.backbone.num_classes

    def check(self, method: str = "gradcam", target: Target = None) -> int | None:
        """Validate ``method`` and ``target`` for this backbone; return the class index (or ``None``).

        Raises ``ValueError`` (one line) for an unknown method, an unknown class, a class on a
        headless backbone, or a target with the class-agnostic EigenCAM.
        """
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        if target is None:
            return None
        if method == "eigencam":
            raise ValueError("eigencam is class-agnostic: it takes no target")
        if self.num_classes is None:
            raise ValueError(f"backbone {self.backbone.name!r} has no classifier: no class target (its target is the {EMBEDDING_TARGET})")
        return resolve_class(target, self.num_classes)

    def explain(
        self,
        embedding: Embedding | Sequence[Embedding],
        method: str = "gradcam",
        target: Target = None,
        threshold: float | None = None,
    ) -> CamResult | list[CamResult]:
        """The cheap step: maps from forward passes already made (``Localizer.embed`` /
        ``embed_batch`` / ``embed_arrays``), one embedding or a list; no trunk pass.

        ``target`` applies to every embedding (``None``: each one's own top-1 / embedding target);
        ``threshold``: the CAM → box threshold (``None``: the explainer's default).
        """
        index = self.check(method, target)
        threshold = self.threshold if threshold is None else _checked_threshold(threshold)
        single = isinstance(embedding, Embedding)
        out = [self._explain(e, method, index, threshold) for e in ([embedding] if single else embedding)]
        return out[0] if single else out

    def explain_embeddings(
        self, embeddings: Sequence[Embedding], method: str = "gradcam", target: Target = None,
        threshold: float | None = None,
    ) -> list[CamResult]:
        """:meth:`explain` of a list (the name callers used before :meth:`explain` took embeddings)."""
        return self.explain(list(embeddings), method=method, target=target, threshold=threshold)

    def __call__(
        self, image: ImageInput | PreparedImage, method: str = "gradcam", target: Target = None,
        threshold: float | None = None,
    ) -> CamResult:
        """Embed and explain one image; see :class:`CamResult`."""
        self.check(method, target)
        prepared = image if isinstance(image, PreparedImage) else self.localizer.prepare(image)
        return self.explain(self.localizer.embed(prepared), method=method, target=target, threshold=threshold)

    def explain_batch(
        self, images: Sequence[PreparedImage], method: str = "gradcam", target: Target = None,
        threshold: float | None = None,
    ) -> list[CamResult]:
        """One forward pass over prepared images of the same padded size, one map each (equal to the
        single-image calls)."""
        self.check(method, target)
        if not images:
            return []
        embeddings = self.localizer.embed_batch(list(images))
        return self.explain(embeddings, method=method, target=target, threshold=threshold)

    def _explain(self, emb: Embedding, method: str, index: int | None, threshold: float) -> CamResult:
        geometry = emb.image.geometry
        if isinstance(self.backbone.trunk, ViTTrunk):
            raw, index, name, prob = self._vit_cam(emb, method, index)
        else:
            # Autograd must work even when the caller runs us under inference_mode / no_grad.
            with torch.inference_mode(False), torch.enable_grad():
                acts = emb.features.clone()
                if method == "gradcam":
                    raw, index, name, prob = self._gradcam(acts, index)
                else:
                    projection = eigen_projection(acts.cpu().numpy())
                    raw, name, prob = np.maximum(projection, 0), EIGEN_TARGET, None
        cam = normalize(upsample(raw, geometry))
        box = geometry.box_to_original(cam_to_box(cam, threshold))
        return CamResult(cam, raw.astype(np.float32), index, name, prob, box, emb, method, threshold)

    def _gradcam(self, acts: torch.Tensor, index: int | None) -> tuple[np.ndarray, int | None, str, float | None]:
        """Grad-CAM on ``(C, h, w)`` activations of this backbone's target (see :func:`gradcam_map`)."""
        head = self.backbone.fc
        if head is None:
            return gradcam_map(acts, lambda a: a.mean(dim=(1, 2)).norm()), index, EMBEDDING_TARGET, None
        with eval_mode(head):
            with torch.no_grad():
                logits = self.backbone.classify(acts[None])[0].float()
            if index is None:
                index = int(logits.argmax())
            prob = float(torch.softmax(logits, dim=0)[index])
            raw = gradcam_map(acts, lambda a: self.backbone.classify(a[None])[0].float()[index])
        return raw, index, class_name(index, logits.numel()), prob

    def _vit_cam(self, emb: Embedding, method: str, index: int | None) -> tuple[np.ndarray, int | None, str, float | None]:
        """Grad-CAM / EigenCAM of a ViT at its last block's ``norm1`` (see the module docstring)."""
        trunk, head = self.backbone.trunk, self.backbone.fc
        image = emb.image.tensor[None].to(self.backbone.device)
        name, prob = VIT_EMBEDDING_TARGET, None
        if head is None:
            def score(pooled: torch.Tensor) -> torch.Tensor:
                return pooled[0].float().norm()
        else:
            with torch.no_grad(), eval_mode(self.backbone):
                logits = head(trunk.pooled(image))[0].float()
            index = int(logits.argmax()) if index is None else index
            name, prob = class_name(index, logits.numel()), float(torch.softmax(logits, dim=0)[index])

            def score(pooled: torch.Tensor) -> torch.Tensor:
                return head(pooled)[0].float()[index]
        with eval_mode(self.backbone):
            acts, grads = trunk.cam(image, score)
        acts, grads = acts[0].float(), grads[0].float()
        if method == "eigencam":
            return np.maximum(eigen_projection(acts.cpu().numpy()), 0), None, VIT_EIGEN_TARGET, None
        return weighted_map(acts, grads), index, name, prob


def _checked_threshold(threshold: float) -> float:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return threshold


def gradcam_map(acts: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """Grad-CAM of a scalar ``score(acts)`` on ``(C, h, w)`` activations: ``ReLU(sum_c w_c acts_c)``
    with ``w_c`` the spatial mean of ``d score / d acts_c``. Returns ``(h, w)`` float32 (not scaled).
    Works under ``no_grad`` / ``inference_mode`` callers, on frozen backbones (only ``score`` is differentiated)."""
    with torch.inference_mode(False), torch.enable_grad():
        leaf = acts.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(score(leaf), leaf)
    return weighted_map(acts.detach(), grad)


def weighted_map(acts: torch.Tensor, grad: torch.Tensor) -> np.ndarray:
    """Grad-CAM's map from ``(C, h, w)`` activations and their gradient: ``ReLU(Σ_c w_c acts_c)``,
    ``w_c`` the spatial mean of channel c's gradient; ``(h, w)`` float32."""
    weights = grad.mean(dim=(1, 2))
    raw = torch.relu((weights[:, None, None] * acts).sum(dim=0))
    return raw.cpu().numpy().astype(np.float32)
