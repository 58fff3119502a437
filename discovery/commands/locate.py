"""``discovery locate IMAGE...``: one JSON line per image, optional overlay PNGs; with
``--detector FILE`` the boxes and scores of a trained detector (``discovery cad train``) instead."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .. import viz
from ..cli import ImageLoop, add_backbone_args
from ..localizer import DEFAULT_MAX_SIDE, Embedding, Localization, Localizer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("locate", help="find the object in images with LOST")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    add_backbone_args(p)
    p.add_argument("--k", type=int, default=100, help="LOST expansion candidates (default 100)")
    p.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="shrink larger images to this side first (0: never)")
    p.add_argument("--overlay-dir", type=Path, default=None, help="write <name>_lost.png overlays here")
    p.add_argument("--detector", type=Path, default=None, metavar="FILE",
                   help="print the boxes and scores of this detector (`discovery cad train`) instead of LOST's box")
    p.add_argument("--top-k", type=int, default=5, help="with --detector: boxes per image (default 5)")
    p.set_defaults(run=run)


def lost_panels(emb: Embedding, loc: Localization) -> np.ndarray:
    """Box and seed | degree map | seed mask, side by side."""
    return viz.side_by_side(*viz.lost_panels(emb.image.rgb, tuple(emb.image.tensor.shape[1:]), loc))


def unique_path(directory: Path, stem: str, suffix: str, taken: set[Path]) -> Path:
    path, n = directory / f"{stem}{suffix}", 1
    while path in taken:
        path, n = directory / f"{stem}-{n}{suffix}", n + 1
    taken.add(path)
    return path


def run_detector(args: argparse.Namespace) -> int:
    from ..detector import Detector

    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    if args.overlay_dir:
        raise ValueError("--overlay-dir draws LOST's panels; it does not apply with --detector")
    detector = Detector(args.detector, device=args.device, max_side=args.max_side or None)
    loop = ImageLoop(args.images, lambda image: detector(image, top_k=args.top_k))
    for image, found in loop:
        print(json.dumps({"image": image, **found.to_json(), "detector_sha256": detector.sha256}), flush=True)
    return loop.exit_code


def run(args: argparse.Namespace) -> int:
    if args.detector is not None:
        return run_detector(args)
    if args.k < 1:
        raise ValueError(f"--k must be at least 1, got {args.k}")
    localizer = Localizer(
        args.backbone, device=args.device, stride=args.stride,
        max_side=args.max_side or None, weights_dir=args.weights_dir,
    )
    if localizer.backbone.info.is_random:
        print("note: backbone 'random' is a pipeline check, not a model", file=sys.stderr)
    if args.overlay_dir:
        args.overlay_dir.mkdir(parents=True, exist_ok=True)
    written: set[Path] = set()
    loop = ImageLoop(args.images, localizer.embed)
    for image, emb in loop:
        loc = localizer.localize(emb, k=args.k)
        record = {"image": image, **loc.to_json()}
        if args.overlay_dir:
            out = unique_path(args.overlay_dir, Path(image).stem, "_lost.png", written)
            Image.fromarray(lost_panels(emb, loc)).save(out)
            record["overlay"] = str(out)
        print(json.dumps(record), flush=True)
    return loop.exit_code
