"""``discovery demo``: localize a bundled example photo and save the overlay (the README's main job)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import options
from ..examples import EXAMPLES, example_path

# Heavy modules (torch, the models) are imported in the functions that run, so parsing is quick.


def register(p: argparse.ArgumentParser) -> None:
    """The options of `discovery demo`."""
    p.add_argument("--example", default="chelsea", choices=sorted(EXAMPLES), help="the bundled photo (default chelsea)")
    options.add_model(p)
    p.add_argument("--out-dir", type=Path, default=Path("out"), help="folder for the overlay (default out/)")
    options.add_alias(p, "--out", "--out-dir", type=Path)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..localizer import Localizer
    from .common import OverlayNames, lost_figure, with_random_fallback

    localizer = with_random_fallback(
        lambda name: Localizer(name, device=args.device, stride=args.stride, weights_dir=args.weights_dir,
                               features=args.features), args.backbone
    )
    path = example_path(args.example)
    emb = localizer.embed(path)
    loc = localizer.localize(emb)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    overlay = OverlayNames(args.out_dir)(path, loc.backbone, "lost")
    Image.fromarray(lost_figure(emb, loc, localizer.backbone.info.pipeline_check)).save(overlay)
    print(json.dumps({"image": str(path), **loc.to_json(), "overlay": str(overlay)}))
    print(f"overlay (box and seed | degree map | seed mask) written to {overlay}", file=sys.stderr)
    return 0
