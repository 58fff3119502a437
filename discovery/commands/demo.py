"""``discovery demo``: localize a bundled example photo and save the overlay (the README's main job)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from ..cli import add_backbone_args
from ..examples import EXAMPLES, example_path
from ..localizer import Localizer
from ..weights import WeightsError
from .locate import lost_panels


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="localize a bundled example photo and save the overlay")
    p.add_argument("--example", default="chelsea", choices=sorted(EXAMPLES))
    add_backbone_args(p)
    p.add_argument("--out", type=Path, default=Path("out"), help="folder for the overlay (default out/)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        localizer = Localizer(args.backbone, device=args.device, stride=args.stride, weights_dir=args.weights_dir)
    except WeightsError as err:
        print(f"note: {err}", file=sys.stderr)
        print("note: carrying on with backbone 'random': a pipeline check, not a result", file=sys.stderr)
        localizer = Localizer("random", device=args.device, stride=args.stride)
    path = example_path(args.example)
    emb = localizer.embed(path)
    loc = localizer.localize(emb)
    args.out.mkdir(parents=True, exist_ok=True)
    overlay = args.out / f"{args.example}_{loc.backbone}_lost.png"
    Image.fromarray(lost_panels(emb, loc)).save(overlay)
    print(json.dumps({"image": str(path), **loc.to_json(), "overlay": str(overlay)}))
    print(f"overlay (box and seed | degree map | seed mask) written to {overlay}", file=sys.stderr)
    return 0
