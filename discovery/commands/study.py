"""``discovery study --backbone BASE --out DIR``: a grid of PUL settings from one base on the real
photos (:mod:`discovery.eval.study`); resumable, each cell a run folder. A ``module:`` base on
the tests' path needs ``PYTHONPATH=tests`` (e.g. ``module:lite0_backbone:efficientnet_lite0``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import options

GUARDS = {"on": True, "off": False}


def register(p: argparse.ArgumentParser) -> None:
    """The options of `discovery study`."""
    options.add_backbone(p, None, what="the base PUL starts from")
    p.add_argument("--out", type=Path, required=True, help="the study folder (cells/<cell>/, study.md, study.csv); rerun to resume")
    grid = p.add_argument_group("grid (every combination is a cell)")
    grid.add_argument("--lr", type=options.positive_float, nargs="+", default=[0.01, 0.1, 0.3], help="projector learning rates (default 0.01 0.1 0.3)")
    grid.add_argument("--trunk-lr-scale", type=options.positive_float, nargs="+", default=[0.1, 1.0],
                      help="trunk learning rate as a multiple of --lr (default 0.1 1)")
    grid.add_argument("--kl-weight", type=options.non_negative_float, nargs="+", default=[0.0, 1.0], help="KL weights (default 0 1)")
    grid.add_argument("--guard", choices=tuple(GUARDS), nargs="+", default=["on", "off"],
                      help="stability guard: on = gradient norm clipped to 2 and 20 warm-up steps (PUL's defaults), off = neither (default on off)")
    cell = p.add_argument_group("every cell")
    cell.add_argument("--steps", type=options.positive_int, default=500, help="training steps per cell, rounded up to whole epochs (default 500)")
    cell.add_argument("--batch-size", type=options.positive_int, default=8, help="images per step (default 8)")
    cell.add_argument("--input-size", type=options.positive_int, default=96, help="training crop side in pixels (default 96)")
    cell.add_argument("--crops", type=options.positive_int, default=8, help="augmented crops per set photo to train on (default 8)")
    options.add_seed(cell)
    options.add_stride(cell, 32, help="output stride LOST and Grad-CAM run at (default 32)")
    options.add_max_side(cell, 512)
    options.add_device(cell)
    options.add_weights_dir(cell)
    options.add_progress(cell)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.study import StudyConfig, run_study

    if not args.backbone:
        raise ValueError("--backbone is required: the base PUL starts from")
    config = StudyConfig(
        base=args.backbone, out=args.out, lrs=tuple(args.lr), trunk_scales=tuple(args.trunk_lr_scale),
        kl_weights=tuple(args.kl_weight), guards=tuple(GUARDS[g] for g in args.guard), steps=args.steps,
        batch_size=args.batch_size, input_size=args.input_size, crops=args.crops, seed=args.seed, stride=args.stride,
        max_side=args.max_side or 512, device=args.device, weights_dir=args.weights_dir, progress=not args.no_progress,
    )
    rows = run_study(config, say=lambda line: print(line, file=sys.stderr))
    print(f"study: {len(rows)} cells; table in {args.out / 'study.md'}", file=sys.stderr)
    return 0
