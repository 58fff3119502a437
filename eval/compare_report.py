"""The report folder of a :class:`~discovery.eval.compare.Comparison`: ``report.md`` (the tables and
every figure), ``comparison.json`` (the same numbers) and one PNG per image (a row per model: LOST
box and seed | inverse degree | Grad-CAM and its box). Self-contained: relative links only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from discovery import viz
from discovery.files import write_text_atomic
from discovery.pul.measures import STAGES

from .compare import METHODS, Comparison, ModelReport, View, whole_image_corloc

CAM_BOX_COLOR = (255, 255, 255)
TOKENCUT_BOX_COLOR = (0, 160, 255)


def _row(view: View, name: str) -> np.ndarray:
    loc, cam = view.lost, view.cam
    prepared = cam.embedding.image
    box, degree, _ = viz.lost_panels(prepared.rgb, tuple(prepared.tensor.shape[1:]), loc)
    box = viz.draw_box(box, view.tokencut.box, loc.image_size, color=TOKENCUT_BOX_COLOR)
    heat = viz.draw_box(viz.heatmap(prepared.rgb, cam.cam), cam.box, loc.image_size, color=CAM_BOX_COLOR)
    target = cam.target_name if cam.probability is None else f"{cam.target_name} p={cam.probability:.2f}"
    return viz.compose([
        viz.Panel(box, f"{name}: LOST box (red), seed; TokenCut box (blue)"),
        viz.Panel(degree, "inverse degree", colorbar=("many links", "few links: seed")),
        viz.Panel(heat, f"Grad-CAM: {target}", colorbar=("low", "high")),
    ])


def figure(comparison: Comparison, image: int) -> np.ndarray:
    """One image's figure: a row per model, stacked (white-padded to one width)."""
    rows = [_row(views[image], report.name) for views, report in zip(comparison.views, comparison.reports)]
    width = max(r.shape[1] for r in rows)
    padded = []
    for row in rows:
        pad = np.full((row.shape[0], width - row.shape[1], 3), 255, np.uint8)
        padded += [np.concatenate([row, pad], axis=1), np.full((8, width, 3), 255, np.uint8)]
    return np.concatenate(padded[:-1], axis=0)


def _num(value: float | None, spec: str = ".3g") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _table(comparison: Comparison) -> list[str]:
    n = len(comparison.items)
    head = ["model", "KL(ref ‖ model)", "top-1 agreement", "degree-map r", "Grad-CAM r"]
    if comparison.has_boxes:
        head += [f"CorLoc {m} (of {n})" for m in METHODS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in comparison.reports:
        f, m = r.function, r.maps
        cells = [f"`{r.name}`" + (" (reference)" if m is None else ""),
                 _num(f.kl if f else None), "—" if f is None else f"{f.top1:.0%}",
                 _num(m.degree if m else None), _num(m.cam if m else None)]
        cells += [f"{r.corloc[k].value:.1f} % ({r.corloc[k].correct}/{r.corloc[k].total})" for k in METHODS if r.corloc]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _stage_table(reports: tuple[ModelReport, ...]) -> list[str]:
    measured = [r for r in reports if r.stages]
    if not measured:
        return ["No activation statistics: the trunks are not staged CNNs."]
    lines = ["| stage | " + " | ".join(f"`{r.name}`" for r in measured) + " |", "|---|" + "---|" * len(measured)]
    for stage in STAGES:
        cells = []
        for r in measured:
            s = next(s for s in r.stages if s.stage == stage)
            cells.append(" ".join(f"{v:.3g}" for v in s.top) + f" (max/median {s.ratio:.1f})")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return lines


def _box(box) -> list[float]:
    return [round(float(v), 1) for v in box]


def as_json(comparison: Comparison) -> dict:
    """The numbers of the report (boxes in original pixels, right/bottom exclusive)."""
    models = []
    for r, views in zip(comparison.reports, comparison.views):
        models.append({
            "name": r.name, "note": r.note,
            "function": None if r.function is None else vars(r.function),
            "maps": None if r.maps is None else vars(r.maps),
            "stages": [{"stage": s.stage, "top4_abs": list(s.top), "max_over_median": s.ratio} for s in r.stages],
            "corloc": {m: {"value": c.value, "correct": c.correct, "total": c.total} for m, c in r.corloc.items()},
            "images": [{"image": i.image_id, "lost_box": _box(v.lost.box), "seed": _box(v.lost.seed_xy),
                        "tokencut_box": _box(v.tokencut.box),
                        "gradcam_box": _box(v.cam.box), "gradcam_target": v.cam.target_name}
                       for i, v in zip(comparison.items, views)],
        })
    return {"images": len(comparison.items), "has_boxes": comparison.has_boxes, "models": models}


def write_report(comparison: Comparison, out: str | Path, title: str = "Backbones compared") -> Path:
    """Write the folder ``out`` (created); returns the path of ``report.md``."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    n = len(comparison.items)
    lines = [f"# {title}", "",
             f"{n} images; the first model is the reference. KL and top-1 compare the ImageNet predictions "
             "(both models need a classifier); r is the Pearson correlation of the maps with the reference's, "
             "mean over images (1: unchanged). CorLoc: IoU ≥ 0.5 with the ground-truth box.", ""]
    if comparison.has_boxes:
        whole = whole_image_corloc(comparison.items)
        lines += [f"A box that is the whole image scores CorLoc {whole.value:.1f} % ({whole.correct}/{whole.total}) "
                  "on these images: the floor to beat.", ""]
    lines += [f"**{r.note}**" for r in comparison.reports if r.note]
    lines += ["## Function, maps and CorLoc", "", *_table(comparison), "",
              "## Activation outliers per stage (top-4 |activation|)", "", *_stage_table(comparison.reports), "",
              "## Images", ""]
    for index, item in enumerate(comparison.items):
        name = f"images/{index:03d}-{Path(item.image_id).stem}.png"
        Image.fromarray(figure(comparison, index)).save(out / name)
        lines += [f"### {item.image_id}", "", f"![{item.image_id}]({name})", ""]
    write_text_atomic(out / "comparison.json", json.dumps(as_json(comparison), indent=1) + "\n")
    write_text_atomic(out / "report.md", "\n".join(lines))
    return out / "report.md"
