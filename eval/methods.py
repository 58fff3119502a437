"""Box-proposal methods the harness can evaluate, by name.

A method maps a :class:`~discovery.localizer.Localizer` and a batch of computed embeddings (same
padded size) to one :class:`Proposal` per image, in original-image pixels. To add one, write such a
function and add it to :data:`METHODS`; ``python -m eval run --method NAME`` then evaluates it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from discovery.explain import Explainer
from discovery.localizer import Embedding, Localizer


@dataclass(frozen=True)
class Proposal:
    """One image's answer: ``box`` ``(x1, y1, x2, y2)`` float pixels of the original image
    (right/bottom exclusive) and optionally a ``seed`` point ``(x, y)`` in pixels."""

    box: tuple[float, float, float, float]
    seed: tuple[float, float] | None = None


#: ``method(localizer, embeddings, k)`` → one proposal per embedding; ``k`` is LOST's candidate count.
Method = Callable[[Localizer, Sequence[Embedding], int], list[Proposal]]


def lost(localizer: Localizer, embeddings: Sequence[Embedding], k: int) -> list[Proposal]:
    """LOST (docs/protocol.md): the localizer's box and the centre of its seed cell."""
    return [Proposal(loc.box, loc.seed_xy) for loc in localizer.localize(list(embeddings), k=k)]


def gradcam(localizer: Localizer, embeddings: Sequence[Embedding], k: int) -> list[Proposal]:
    """Grad-CAM box (docs/explain.md): the top-1 class's map (the pooled-feature norm for headless
    backbones), thresholded at :data:`discovery.explain.DEFAULT_THRESHOLD` of its maximum, largest
    connected component. A classic baseline, scored with the same protocol as LOST (``k`` unused)."""
    return [Proposal(cam.box) for cam in Explainer(localizer).explain_embeddings(embeddings)]


METHODS: MappingProxyType[str, Method] = MappingProxyType({"lost": lost, "gradcam": gradcam})


def get_method(name: str) -> Method:
    """The method called ``name``; ``ValueError`` (one line) for an unknown one."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}") from None
