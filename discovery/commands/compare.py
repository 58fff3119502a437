"""``discovery compare A B [B2 ...]``: backbones side by side (a base and its PUL checkpoints, say)
on the same images, into a self-contained report folder (:mod:`discovery.eval.compare`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import options

# Heavy modules (torch, the models) are imported in the functions that run, so parsing is quick.


def register(p: argparse.ArgumentParser) -> None:
    """The options of `discovery compare`."""
    p.add_argument("backbones", nargs="+", metavar="BACKBONE",
                   help="two or more backbone names; the first is the reference (e.g. imagenet pul:runs/pul.safetensors)")
    options.add_image_source(p)
    group = p.add_argument_group("model")
    options.add_stride(group)
    options.add_device(group)
    options.add_weights_dir(group)
    options.add_k(p)
    options.add_max_side(p, 512)
    p.add_argument("--out-dir", type=Path, required=True, help="the report folder: report.md, comparison.json, images/")
    p.add_argument("--overwrite", action="store_true", help="write into an --out-dir that is not empty")
    p.set_defaults(run=run)


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse (one line) a file, or a non-empty folder without ``--overwrite``."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out-dir {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out-dir {out} is not empty; choose another folder or pass --overwrite")


def run(args: argparse.Namespace) -> int:
    from ..eval.compare import compare, explainers, image_items
    from ..eval.compare_report import write_report

    if len(args.backbones) < 2:
        raise ValueError("compare needs at least two backbones (the first is the reference)")
    check_out_dir(args.out_dir, args.overwrite)
    items, boxed = image_items(args.images, args.dataset, args.root, args.limit)
    models = explainers(args.backbones, args.stride, args.device, args.weights_dir, args.max_side or None)
    report = write_report(compare(models, items, boxed, args.k, args.max_side or None), args.out_dir)
    print(f"compared {len(models)} backbones on {len(items)} images: {report}", file=sys.stderr)
    return 0
