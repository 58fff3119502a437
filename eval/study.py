"""Does PUL change a real network? A grid of PUL settings from one base, each cell a run folder.

The training images are augmented crops of the real-photo set (:mod:`discovery.eval.photos`: random
crops of 50-100 % of each side, half of them flipped, longer side <= 256; PUL adds its own random
crop and flip). The grid crosses the learning rate, the trunk's learning-rate multiplier, the KL
weight and the stability guard (on: gradient norm clipped to 2 and 20 warm-up steps, PUL's
defaults; off: neither). Each cell trains for about ``steps`` steps (whole epochs) and then records:

- the **dynamics** from the ``--log-dynamics`` CSV: the majority class's share of each batch (mean;
  1 = the whole batch in one class) and how often the majority class changes from one step to the
  next (the paper's *swing*), the function speed (median), CE at the start and the end, the KL to
  the base at the end (training batches, at PUL's temperature, without T²), the largest gradient norm;
- **knowledge kept**: KL and top-1 agreement with the base on held-out photos and on the set;
- **maps moved**: correlation of the degree maps and of the Grad-CAM maps with the base's;
- **CorLoc** of the LOST and the Grad-CAM boxes on the set (its size is in every table).

Resumable: a cell with ``figures.json`` is done; one with a PUL state file resumes its training.
The study's options are in ``study.json``; a larger grid may reuse the folder (done cells are
kept), other shared options (steps, batch, crops, seed...) are refused.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from discovery.files import write_text_atomic
from discovery.pul import PULConfig, PULError, plot_dynamics, read_dynamics, state_path, train
from discovery.sampling import generator

from .compare import METHODS, compare, explainers, image_items, whole_image_corloc
from .compare_report import write_report
from .photos import held_out, photos, write_photos

GUARD = {True: (2.0, 20), False: (0.0, 0)}  # (grad_clip, warmup_steps)
GRID = ("lrs", "trunk_scales", "kl_weights", "guards")


@dataclass(frozen=True)
class Cell:
    lr: float
    trunk_lr_scale: float
    kl_weight: float
    guard: bool

    @property
    def name(self) -> str:
        return f"lr{self.lr:g}-trunk{self.trunk_lr_scale:g}-kl{self.kl_weight:g}-guard{'on' if self.guard else 'off'}"


@dataclass(frozen=True)
class StudyConfig:
    """The grid (``lrs`` × ``trunk_scales`` × ``kl_weights`` × ``guards``) and what every cell shares."""

    base: str
    out: Path
    lrs: tuple[float, ...] = (0.01, 0.1, 0.3)
    trunk_scales: tuple[float, ...] = (0.1, 1.0)
    kl_weights: tuple[float, ...] = (0.0, 1.0)
    guards: tuple[bool, ...] = (True, False)
    steps: int = 500
    batch_size: int = 8
    input_size: int = 96
    crops: int = 8
    seed: int = 0
    stride: int = 32
    max_side: int = 512
    device: str = "cpu"
    weights_dir: Path | None = None
    progress: bool = False

    def cells(self) -> list[Cell]:
        return [Cell(*c) for c in itertools.product(self.lrs, self.trunk_scales, self.kl_weights, self.guards)]

    def recorded(self) -> dict:
        """The options ``study.json`` keeps; all but the grid's (:data:`GRID`) must agree for a study
        folder to be continued, so a grid can grow into it (its done cells are kept)."""
        skip = ("out", "device", "weights_dir", "progress")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k not in skip}


def validate(config: StudyConfig) -> None:
    checks = [
        (config.steps >= 1, f"--steps must be at least 1 (got {config.steps})"),
        (config.crops >= 1, f"--crops must be at least 1 (got {config.crops})"),
        (all(v > 0 for v in config.lrs), "every --lr must be above 0"),
        (all(v > 0 for v in config.trunk_scales), "every --trunk-lr-scale must be above 0"),
        (all(v >= 0 for v in config.kl_weights), "every --kl-weight must be 0 or more"),
        (bool(config.cells()), "the grid is empty"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    saved = out / "study.json"
    if saved.is_file():
        before, now = json.loads(saved.read_text()), config.recorded()
        differ = [k for k in now if k not in GRID and before.get(k) != now[k]]
        if differ:
            raise ValueError(f"{saved} is a study with another {', '.join(differ)}; choose another --out")


def write_crops(folder: Path, seed: int, crops: int) -> int:
    """``crops`` augmented crops of every set photo into ``folder`` (deterministic in ``seed``)."""
    folder.mkdir(parents=True, exist_ok=True)
    found, _ = photos()
    for photo in found:
        image = Image.fromarray(photo.rgb)
        g = generator(seed, "study-crops", photo.name)
        for j in range(crops):
            u = [float(v) for v in torch.rand(5, generator=g)]
            w, h = max(16, round(image.width * (0.5 + 0.5 * u[0]))), max(16, round(image.height * (0.5 + 0.5 * u[1])))
            x, y = round((image.width - w) * u[2]), round((image.height - h) * u[3])
            crop = image.crop((x, y, x + w, y + h))
            crop.thumbnail((256, 256))
            if u[4] < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop.save(folder / f"{photo.name}-{j:02d}.png")
    return len(found) * crops


def prepare_data(config: StudyConfig) -> tuple[Path, Path, Path]:
    """The study's photo set, training crops and held-out photos (written once)."""
    out = Path(config.out)
    photos_root, crops, heldout = out / "data" / "photos", out / "data" / "crops", out / "data" / "held-out"
    if not (photos_root / "VOCdevkit").is_dir():
        write_photos(photos_root)
    if not crops.is_dir():
        write_crops(crops, config.seed, config.crops)
    if not heldout.is_dir():
        heldout.mkdir(parents=True)
        for name, rgb in held_out():
            Image.fromarray(rgb).save(heldout / f"{name}.png")
    return photos_root, crops, heldout


def dynamics_summary(csv_path: Path) -> dict[str, float]:
    """Swing, function speed, CE, KL and gradient norm of one run's dynamics CSV."""
    data = read_dynamics(csv_path)
    hist = np.stack([data[k] for k in sorted((k for k in data if k.startswith("hist_")), key=lambda k: int(k[5:]))])
    share = hist.max(axis=0) / np.maximum(hist.sum(axis=0), 1)
    leader = hist.argmax(axis=0)
    tail = max(1, len(data["ce"]) // 10)
    return {
        "steps": int(len(data["step"])),
        "majority_share": float(share.mean()),
        "swing_rate": float((leader[1:] != leader[:-1]).mean()) if len(leader) > 1 else 0.0,
        "speed_median": float(np.median(data["speed"])),
        "ce_start": float(data["ce"][0]),
        "ce_end": float(data["ce"][-tail:].mean()),
        "kl_end": float(data["kl"][-tail:].mean()),
        "grad_norm_max": float(np.max(data["grad_norm"])),
    }


MEASURES = ("set_images", "heldout_images", "heldout_top1", "heldout_kl", "set_top1", "set_kl", "degree_r", "gradcam_r",
            "corloc_lost", "corloc_tokencut", "corloc_gradcam", "base_corloc_lost", "base_corloc_tokencut", "base_corloc_gradcam")


def _measure(config: StudyConfig, model: str, photos_root: Path, heldout: Path, report: Path) -> dict[str, float | None]:
    """Against the base: the function on the held-out photos and on the set, the maps, CorLoc."""
    pair = explainers([config.base, model], config.stride, config.device, config.weights_dir, config.max_side)
    items, boxed = image_items(dataset="voc07", root=photos_root)
    on_set = compare(pair, items, boxed, max_side=config.max_side)
    write_report(on_set, report, title=f"{model} against {config.base} on the {len(items)} set photos")
    outside = compare(pair, image_items(images=heldout)[0], False, max_side=config.max_side).reports[1]
    base, cell = on_set.reports
    nan = math.nan
    return {
        "set_images": len(items),
        "heldout_images": outside.function.images if outside.function else 0,
        "heldout_top1": outside.function.top1 if outside.function else nan,
        "heldout_kl": outside.function.kl if outside.function else nan,
        "set_top1": cell.function.top1 if cell.function else nan,
        "set_kl": cell.function.kl if cell.function else nan,
        "degree_r": cell.maps.degree if cell.maps.degree is not None else nan,
        "gradcam_r": cell.maps.cam,
        **{f"corloc_{m}": cell.corloc[m].value for m in METHODS},
        **{f"base_corloc_{m}": base.corloc[m].value for m in METHODS},
    }


def run_cell(config: StudyConfig, cell: Cell, crops: Path, photos_root: Path, heldout: Path, images: int) -> dict:
    """Train (or resume) one cell and measure it; its ``figures.json`` marks it done."""
    folder = Path(config.out) / "cells" / cell.name
    done = folder / "figures.json"
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    weights, dynamics = folder / "pul.safetensors", folder / "dynamics.csv"
    per_epoch = math.ceil(images / config.batch_size)
    diverged = ""
    if not weights.is_file():
        clip, warmup = GUARD[cell.guard]
        try:
            train(PULConfig(
                base=config.base, out=weights, images=crops, epochs=max(1, math.ceil(config.steps / per_epoch)),
                batch_size=config.batch_size, input_size=config.input_size, lr=cell.lr, trunk_lr_scale=cell.trunk_lr_scale,
                kl_weight=cell.kl_weight, grad_clip=clip, warmup_steps=warmup, seed=config.seed, probe_size=8, workers=0,
                log_dynamics=dynamics, resume=state_path(weights).is_file(), device=config.device,
                weights_dir=config.weights_dir, progress=config.progress,
            ))
        except PULError as err:
            if "non-finite" not in str(err):
                raise
            diverged = str(err)  # a finding, not a failure: the cell is recorded as diverged
    try:
        plot_dynamics(dynamics, folder / "dynamics.png")
    except PULError:  # no matplotlib: the numbers are still written
        pass
    if diverged:
        measured = {**dict.fromkeys(MEASURES, math.nan), "set_images": len(image_items(dataset="voc07", root=photos_root)[0]),
                    "heldout_images": len(image_items(images=heldout)[0])}
    else:
        measured = _measure(config, f"pul:{weights}", photos_root, heldout, folder / "compare")
    try:
        summary = dynamics_summary(dynamics)
    except (PULError, FileNotFoundError):  # diverged before the first logged step
        summary = dict.fromkeys(("majority_share", "swing_rate", "speed_median", "ce_start", "ce_end", "kl_end",
                                 "grad_norm_max"), math.nan) | {"steps": 0}
    figures = {"cell": cell.name, **asdict(cell), "diverged": diverged, **summary, **measured}
    write_text_atomic(done, json.dumps(figures, indent=1) + "\n")
    return figures


COLUMNS = (
    ("cell", "cell", "s"), ("steps", "steps", "d"), ("majority_share", "majority share", ".2f"),
    ("swing_rate", "swing rate", ".2f"), ("speed_median", "speed (median)", ".2g"), ("ce_start", "CE start", ".2f"),
    ("ce_end", "CE end", ".2f"), ("kl_end", "KL end", ".2g"), ("grad_norm_max", "max grad norm", ".3g"),
    ("heldout_top1", "top-1 kept (held-out)", ".0%"), ("set_top1", "top-1 kept (set)", ".0%"),
    ("heldout_kl", "KL to base (held-out)", ".2g"), ("degree_r", "degree r", ".3f"), ("gradcam_r", "Grad-CAM r", ".3f"),
    ("corloc_lost", "CorLoc LOST", ".1f"), ("corloc_tokencut", "CorLoc TokenCut", ".1f"), ("corloc_gradcam", "CorLoc Grad-CAM", ".1f"),
)


def table(rows: list[dict]) -> str:
    """The Markdown table of every cell (CorLoc over the set: its size is in the header)."""
    n = rows[0]["set_images"] if rows else 0
    head = [label + (f" (of {n})" if key.startswith("corloc") else "") for key, label, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [format(row[key], spec) for key, _, spec in COLUMNS]
        cells[0] += " (diverged)" if row["diverged"] else ""
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_study(config: StudyConfig, say=print) -> list[dict]:
    """Every cell of the grid (resuming a study folder), then ``study.md`` and ``study.csv``."""
    validate(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "study.json", json.dumps(config.recorded(), indent=1) + "\n")
    photos_root, crops, heldout = prepare_data(config)
    images = len(image_items(images=crops)[0])
    rows = []
    for number, cell in enumerate(config.cells(), 1):
        say(f"study: cell {number}/{len(config.cells())} {cell.name}")
        rows.append(run_cell(config, cell, crops, photos_root, heldout, images))
    first = next((r for r in rows if not r["diverged"]), rows[0])
    whole = whole_image_corloc(image_items(dataset="voc07", root=photos_root)[0])
    header = (f"# PUL study from `{config.base}`\n\n{images} training crops; CorLoc on the {first['set_images']} "
              f"set photos (base: LOST {first['base_corloc_lost']:.1f}, TokenCut {first['base_corloc_tokencut']:.1f}, "
              f"Grad-CAM {first['base_corloc_gradcam']:.1f}; "
              f"a whole-image box: {whole.value:.1f}); "
              f"top-1 kept on {first['heldout_images']} held-out photos and on the set.\n\n")
    write_text_atomic(out / "study.md", header + table(rows))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "study.csv", text.getvalue())
    return rows

