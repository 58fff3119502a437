"""The seed paper's evidence that bears on discovery, computed on PUL checkpoints.

- **Grad-CAM across checkpoints** (the paper's Fig. 4): for a few training images, the Grad-CAM of
  the image's assigned random label (the PUL projector's logit) and of another label, at every
  checkpoint (``pul train --save-every-epoch`` keeps the projector of epochs 0..N). The paper's
  claim: early maps sit on random spots, later ones on the object, and only for the assigned label.
- **Activation statistics per stage** (the paper's Fig. 6, "massive activation"): per stage
  (``conv1`` = the stem after BatchNorm and ReLU, ``layer1`` .. ``layer4`` = each stage's output;
  on a ViT ``block1`` .. ``blockN``, the residual stream after each block, every token), the largest
  ``|activation|`` over the median ``|activation|`` and the top 4, on the same images, for the base
  against the refined weights. The paper's claim: PUL shrinks the outliers.
- **Patch-token norms** (ViTs; §4.3: PUL "mitigates the need for registers"): the norm of every patch
  token at the last block's output, for each checkpoint (:class:`~.measures.TokenNorms`); run it on a
  model with registers too (e.g. ``timm:vit_small_patch14_reg4_dinov2@FILE``) to compare.

The rows and cells are :mod:`discovery.pul.measures`; figures are drawn by :mod:`discovery.pul.figures`;
the command is ``discovery pul evidence``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from ..architecture import RESNET50
from ..backbone import Backbone, eval_mode
from ..backbones import load_backbone
from ..explain import gradcam_map, normalize, upsample, weighted_map
from ..files import write_text_atomic
from ..images import PreparedImage, prepare
from ..names import parse_backbone_name
from ..vit import ViTTrunk
from ..weights import load_file
from .data import ImageList, PULError, random_labels
from .figures import draw_cam_grid, draw_stats, draw_token_norms, pyplot
from .measures import HIGH_NORM_FACTOR, STAGES, CamCell, StageStats, TokenNorms
from .model import Projector, projector_from_state

#: trunk part whose output each stage's activations are
STAGE_INDEX = {stage: RESNET50.index("relu" if stage == "conv1" else stage) for stage in STAGES}
TOP = 4


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: its display ``label`` (``epoch K`` for ``OUT.epochK.safetensors``), the
    backbone, the PUL projector (``None``: none saved, e.g. a registry base) and its metadata."""

    name: str
    label: str
    backbone: Backbone
    projector: Projector | None
    metadata: dict


def load_checkpoint(name: str, stride: int = 32, device: str = "cpu", weights_dir: Path | None = None) -> Checkpoint:
    """Load ``name`` (any backbone name; a PUL per-epoch file also gives its projector)."""
    backbone = load_backbone(name, device=device, stride=stride, weights_dir=weights_dir)
    projector = None
    parsed = parse_backbone_name(name)
    if parsed.kind == "checkpoint" and backbone.info.path:
        projector = projector_from_state(load_file(Path(backbone.info.path))[0])
    meta = backbone.info.metadata
    label = f"epoch {meta['epoch']}" if "epoch" in meta else Path(parsed.value).name
    return Checkpoint(name, label, backbone, None if projector is None else projector.to(backbone.device), meta)


def training_labels(checkpoints: list[Checkpoint], images: ImageList) -> tuple[torch.Tensor, int]:
    """The random labels the PUL run gave ``images`` (from the seed and class count in the first
    PUL checkpoint's metadata), and the class count. The image list must be the one trained on."""
    pul = [c for c in checkpoints if c.metadata.get("kind") == "pul"]
    if not pul:
        raise PULError("none of the checkpoints is a PUL checkpoint (pul train --save-every-epoch writes them)")
    meta = pul[0].metadata
    trained_on = meta.get("images", {}).get("fingerprint_sha256")
    if trained_on != images.fingerprint:
        raise PULError(
            f"{images.source} is not the image list {pul[0].name} was trained on "
            f"({meta.get('images', {}).get('source')}); give the same --images / --dataset --root"
        )
    classes = int(meta["classes"])
    return random_labels(len(images), classes, int(meta["seed"])), classes


def pick(images: ImageList, count: int) -> list[int]:
    """``count`` indices spread evenly over the list (the same ones for every checkpoint)."""
    if count < 1:
        raise PULError(f"--count must be at least 1 (got {count})")
    return sorted({round(i * (len(images) - 1) / max(1, count - 1)) for i in range(min(count, len(images)))})


def prepared(images: ImageList, indices: list[int], backbone: Backbone, max_side: int) -> list[PreparedImage]:
    return [prepare(images.paths[i], backbone.mean, backbone.std, backbone.stride, max_side) for i in indices]


@torch.inference_mode()
def _features(backbone: Backbone, image: PreparedImage) -> torch.Tensor:
    with eval_mode(backbone):
        return backbone(image.tensor[None].to(backbone.device))[0].float()


def cam_grid(checkpoint: Checkpoint, images: list[PreparedImage], labels: list[int], classes: int) -> list[CamCell]:
    """Grad-CAM of each image's assigned label and of the next label ``(y + 1) mod C`` under the
    checkpoint's projector (none when it has no projector)."""
    if checkpoint.projector is None:
        return []
    backbone, projector = checkpoint.backbone, checkpoint.projector
    cells = []
    for index, (image, label) in enumerate(zip(images, labels)):
        acts = None if isinstance(backbone.trunk, ViTTrunk) else _features(backbone, image)
        for target, assigned in ((label, True), ((label + 1) % classes, False)):
            if acts is None:  # a ViT: at its last block's norm1, as the explainer does
                with eval_mode(backbone):
                    tokens, grads = backbone.trunk.cam(image.tensor[None].to(backbone.device),
                                                       lambda pooled, t=target: projector(pooled)[0, t])
                raw = weighted_map(tokens[0].float(), grads[0].float())
            else:
                raw = gradcam_map(acts, lambda a, t=target: projector(a.mean(dim=(1, 2))[None])[0, t])
            cam = normalize(upsample(raw, image.geometry))
            cells.append(CamCell(checkpoint.label, index, target, assigned, cam))
    return cells


def _stage_outputs(backbone: Backbone, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each stage's output for one image: the ResNet50's :data:`STAGES`, a ViT's blocks."""
    if isinstance(backbone.trunk, ViTTrunk):
        return {f"block{i}": out for i, out in enumerate(backbone.trunk.residual_stream(x), 1)}
    outputs = {}
    for index, module in enumerate(backbone.trunk):
        x = module(x)
        outputs.update({stage: x for stage, at in STAGE_INDEX.items() if at == index})
    return outputs


@torch.inference_mode()
def stage_stats(checkpoint: Checkpoint, images: list[PreparedImage]) -> list[StageStats]:
    """:class:`StageStats` of every stage (:func:`_stage_outputs`) over all ``images`` (padding cells included)."""
    magnitudes: dict[str, list[torch.Tensor]] = {}
    for image in images:
        with eval_mode(checkpoint.backbone):
            outputs = _stage_outputs(checkpoint.backbone, image.tensor[None].to(checkpoint.backbone.device))
        for stage, out in outputs.items():
            magnitudes.setdefault(stage, []).append(out.abs().flatten().float().cpu())
    rows = []
    for stage in magnitudes:
        values = torch.cat(magnitudes[stage])
        nonzero = values[values > 0]
        median = float(nonzero.median()) if len(nonzero) else 0.0
        peak = float(values.max())
        top = tuple(float(v) for v in values.topk(min(TOP, len(values))).values)
        ratio = peak / median if median > 0 else float("inf")
        rows.append(StageStats(checkpoint.label, stage, peak, median, ratio, 1 - len(nonzero) / len(values), top))
    return rows


@torch.inference_mode()
def token_norms(checkpoint: Checkpoint, images: list[PreparedImage]) -> TokenNorms | None:
    """:class:`TokenNorms` of a ViT checkpoint over ``images`` (``None`` for a CNN)."""
    trunk = checkpoint.backbone.trunk
    if not isinstance(trunk, ViTTrunk):
        return None
    norms = []
    for image in images:
        with eval_mode(checkpoint.backbone):
            last = trunk.residual_stream(image.tensor[None].to(checkpoint.backbone.device))[-1]
        norms.append(last[0, trunk.prefix:].float().norm(dim=1).cpu())
    values = torch.cat(norms).double()
    median = float(values.median())
    return TokenNorms(checkpoint.label, median, float(values.quantile(0.99)), float(values.max()),
                      float((values > HIGH_NORM_FACTOR * median).double().mean()), values.numpy())


NORM_COLUMNS = ("checkpoint", "median_norm", "p99_norm", "max_norm", "high_norm_fraction")


def norms_csv(rows: list[TokenNorms]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(NORM_COLUMNS)
    for r in rows:
        writer.writerow([r.checkpoint, f"{r.median:.6g}", f"{r.p99:.6g}", f"{r.max:.6g}", f"{r.high_fraction:.6f}"])
    return out.getvalue()


CSV_COLUMNS = ("checkpoint", "stage", "max_abs", "median_abs", "max_over_median", "zero_fraction", "top4_abs")


def stats_csv(rows: list[StageStats]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([r.checkpoint, r.stage, f"{r.max_abs:.6g}", f"{r.median_abs:.6g}", f"{r.ratio:.6g}",
                         f"{r.zero_fraction:.4f}", " ".join(f"{v:.6g}" for v in r.top)])
    return out.getvalue()


def stats_markdown(rows: list[StageStats], note: str = "") -> str:
    """One row per stage, one column per checkpoint: ``max/median (max)``."""
    names = list(dict.fromkeys(r.checkpoint for r in rows))
    stages = list(dict.fromkeys(r.stage for r in rows))
    cell = {(r.checkpoint, r.stage): r for r in rows}
    lines = [
        "# Activation statistics per stage (the seed paper's massive-activation claim, Fig. 6)",
        "",
        ("Largest |activation| over the median non-zero |activation|, over the same images; the largest "
         "|activation| in brackets. The paper reports that PUL makes the outliers smaller."),
        "",
    ]
    if note:
        lines += [f"**{note}**", ""]
    lines += ["| stage | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for stage in stages:
        lines.append(f"| {stage} | " + " | ".join(
            f"{cell[(n, stage)].ratio:.1f} ({cell[(n, stage)].max_abs:.3g})" for n in names) + " |")
    return "\n".join(lines) + "\n"


PIPELINE_NOTE = "pipeline check, not a result: random-init weights"


def write_evidence(
    names: list[str], images: ImageList, out: Path, count: int = 4, max_side: int | None = 512, stride: int = 32,
    device: str = "cpu", weights_dir: Path | None = None, plot: bool = True,
) -> dict[str, Path]:
    """Load every checkpoint in ``names`` (base first, then e.g. ``OUT.epoch0..N.safetensors``), pick
    ``count`` of the training ``images`` and write into ``out``: ``activations.md`` / ``.csv``, and
    with ``plot`` ``activations.png`` and ``gradcam_grid.png``; for ViTs ``token_norms.csv`` (and
    ``.png``) too. Returns the written paths by name."""
    if plot:
        pyplot(" (or --no-plot)")  # fail before the expensive part when matplotlib is missing
    checkpoints = [load_checkpoint(n, stride, device, weights_dir) for n in names]
    labels, classes = training_labels(checkpoints, images)
    chosen = pick(images, count)
    random_base = any(c.backbone.info.is_random for c in checkpoints)
    note = PIPELINE_NOTE if random_base else ""
    stats, cells, norms = [], [], []
    inputs = prepared(images, chosen, checkpoints[0].backbone, max_side)
    for checkpoint in checkpoints:
        stats += stage_stats(checkpoint, inputs)
        cells += cam_grid(checkpoint, inputs, [int(labels[i]) for i in chosen], classes)
        found = token_norms(checkpoint, inputs)
        norms += [found] if found is not None else []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"activations.md": out / "activations.md", "activations.csv": out / "activations.csv"}
    write_text_atomic(written["activations.md"], stats_markdown(stats, note))
    write_text_atomic(written["activations.csv"], stats_csv(stats))
    if norms:
        written["token_norms.csv"] = out / "token_norms.csv"
        write_text_atomic(written["token_norms.csv"], norms_csv(norms))
    if plot:
        written["activations.png"] = draw_stats(stats, out / "activations.png", note)
        if norms:
            written["token_norms.png"] = draw_token_norms(norms, out / "token_norms.png", note)
        if cells:
            written["gradcam_grid.png"] = draw_cam_grid(cells, [p.rgb for p in inputs], out / "gradcam_grid.png", note)
    return written
