"""Which backbones the app offers, which of them have their weights here, and what to say about each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from discovery import names as N
from discovery import weights as W

CHECKPOINT = "checkpoint"
"""The dropdown value meaning "use the checkpoint path typed in the text box"."""

RANDOM_NOTE = "pipeline check, not a model (seeded random init: its boxes mean nothing)"


@dataclass(frozen=True)
class BackboneChoice:
    """One dropdown entry: ``value`` is what the handlers receive, ``label`` what users see,
    ``problem`` the one-line fix when the weights are missing (``None`` when usable)."""

    value: str
    label: str
    problem: str | None


def is_random(name: str) -> bool:
    """``random`` or a random ViT (``random-vits16`` ...): seeded init, no file."""
    return name == N.RANDOM or name in N.RANDOM_VITS


def stand_in(name: str) -> str:
    """The random init of registry ``name``'s layout, to check the pipeline while its weights are missing."""
    spec = W.get_spec(name)
    return f"{N.RANDOM}-{spec.architecture}" if spec.is_vit else N.RANDOM


def weights_problem(name: str, weights_dir: Path | None = None, download: bool = False) -> str | None:
    """The one-line fix when registry ``name`` cannot be loaded from local files, else ``None``.

    Cheap: looks for the file only (the hash is checked when the backbone is loaded). With
    ``download`` (and downloads not switched off) a missing file is not a problem: it is fetched
    on first use.
    """
    spec = W.get_spec(name)
    if on_disk(name, weights_dir) or (download and not W.offline()):
        return None
    return W.missing_message(spec, weights_dir)


def on_disk(name: str, weights_dir: Path | None = None) -> bool:
    """Whether registry ``name`` needs no file, or its file is in ``weights_dir`` or the hub cache."""
    spec = W.get_spec(name)
    return spec.filename is None or any(path.is_file() for path in W.candidates(spec, weights_dir))


def backbone_choices(weights_dir: Path | None = None, download: bool = False) -> list[BackboneChoice]:
    """Every registry backbone (missing ones labelled ``(missing)``), the random ViTs, then the checkpoint entry."""
    out = []
    for name in (*W.REGISTRY, *N.RANDOM_VITS):
        if is_random(name):
            out.append(BackboneChoice(name, f"{name}: pipeline check, not a model", None))
            continue
        problem = weights_problem(name, weights_dir, download)
        if problem:
            label = f"{name} (missing)"
        elif not on_disk(name, weights_dir):
            label = f"{name} (downloaded on first run)"
        else:
            label = name
        out.append(BackboneChoice(name, label, problem))
    out.append(BackboneChoice(CHECKPOINT, "checkpoint or other network: pul:PATH, .safetensors/.pt, timm:NAME, module:pkg.mod:factory (type it below)", None))
    return out


def initial_backbone(preferred: str, weights_dir: Path | None = None, download: bool = False) -> tuple[str, str | None]:
    """The backbone selected when the page opens, and a note when ``preferred`` had to be replaced.

    A registry name whose weights are missing falls back to the random init of its layout
    (:func:`stand_in`: ``random``, or ``random-vits16`` for ``dino-vits16``...) so that the bundled
    examples run end to end on a fresh machine; the note says how to get the real weights.
    """
    if preferred not in W.REGISTRY:
        return preferred, None
    problem = weights_problem(preferred, weights_dir, download)
    if problem is None:
        return preferred, None
    fallback = stand_in(preferred)
    return fallback, f"{problem}. Until then `{fallback}` is selected: {RANDOM_NOTE}."


def describe(value: str, checkpoint: str = "", weights_dir: Path | None = None, download: bool = False) -> str:
    """A one-line Markdown status for a dropdown selection (what it is, or how to fix it)."""
    if value == CHECKPOINT:
        if not checkpoint.strip():
            return "Type a checkpoint path below (`pul:PATH`, or a `.safetensors` / `.pt` / `.pth` file), or another network: `timm:NAME[@FILE]` (a CNN or a `vit_*`), `module:pkg.mod:factory` (docs/backbones.md, docs/vit.md)."
        return f"Checkpoint `{checkpoint.strip()}`: loaded (and checked) when you press Run."
    if is_random(value):
        return f"`{value}`: {RANDOM_NOTE}."
    try:
        spec = W.get_spec(value)
    except W.WeightsError as err:
        return f"⚠ {err}"
    problem = weights_problem(value, weights_dir, download)
    if problem:
        return f"⚠ {problem}. Pick `{stand_in(value)}` to check the pipeline meanwhile."
    if not on_disk(value, weights_dir):
        return f"`{value}`: {spec.description}. Its weights are downloaded from {spec.url} on the first run."
    return f"`{value}`: {spec.description}."
