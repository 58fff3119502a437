"""``discovery explain IMAGE...``: Grad-CAM / EigenCAM maps, CAM boxes, optional sanity check.

Prints one JSON line per image on stdout; the sanity-check tables go to stderr so stdout stays
machine-readable (their numbers are also in the JSON line, under ``"sanity"``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import options
from ..defaults import CAM_METHODS, DEFAULT_MAX_SIDE, DEFAULT_THRESHOLD
from ..examples import EXAMPLES, example_path

if TYPE_CHECKING:
    from .common import OverlayNames

# Heavy modules (torch, the models) are imported in the functions that run, so parsing is quick.

PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def register(p: argparse.ArgumentParser) -> None:
    """The options of `discovery explain`."""
    p.add_argument("images", nargs="*", metavar="IMAGE")
    p.add_argument("--example", action="append", default=[], choices=sorted(EXAMPLES), help="also explain a bundled example photo (repeatable)")
    options.add_model(p)
    p.add_argument("--method", default="gradcam", choices=CAM_METHODS, help="saliency method (default gradcam)")
    p.add_argument(
        "--target", default=None, metavar="CLASS",
        help="ImageNet class index or name to explain (default: the top-1 prediction; "
        "headless backbones explain the pooled-feature norm)",
    )
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help=f"CAM box threshold, fraction of the map's max (default {DEFAULT_THRESHOLD})")
    options.add_max_side(p, DEFAULT_MAX_SIDE)
    p.add_argument("--out-dir", type=Path, default=None, help="write <image>_<backbone>_<method>.png overlays (heat map + CAM box) here")
    p.add_argument("--sanity-check", action="store_true", help="randomise layers top-down and report how the map changes")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG", help="with --sanity-check: save the maps and metrics as a figure")
    options.add_seed(p, 0, "the sanity check's re-initialisation")
    p.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.plot is not None:
        if not args.sanity_check:
            raise ValueError("--plot needs --sanity-check")
        if args.plot.suffix.lower() not in PLOT_SUFFIXES:
            raise ValueError(f"--plot must end in {', '.join(PLOT_SUFFIXES)}, got {args.plot.name!r}")
        if importlib.util.find_spec("matplotlib") is None:
            raise ValueError("--plot needs matplotlib: pip install matplotlib")
        if args.plot.parent.exists() and not args.plot.parent.is_dir():
            raise ValueError(f"--plot {args.plot}: {args.plot.parent} is not a directory")
    if args.out_dir is not None and args.out_dir.exists() and not args.out_dir.is_dir():
        raise ValueError(f"--out-dir {args.out_dir}: not a directory")


def _plot_path(plot: Path, image: str, backbone: str, several: bool, names: OverlayNames) -> Path:
    """``--plot`` itself for one image; for several, one file each by the overlay naming rule."""
    return names(image, backbone, plot.stem, plot.suffix) if several else plot


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..explain import Explainer
    from ..localizer import Localizer
    from ..sanity import plot_sanity, sanity_check
    from .common import ImageLoop, OverlayNames, cam_figure, with_random_fallback

    _check_args(args)
    images = list(args.images) + [str(example_path(name)) for name in args.example]
    if not images:
        raise ValueError("give at least one IMAGE or --example NAME")
    def build(name: str) -> Localizer:
        return Localizer(name, device=args.device, stride=args.stride, max_side=args.max_side or None,
                         weights_dir=args.weights_dir, features=args.features)

    # Bundled examples alone are a demo: like `discovery demo`, they run (labelled) without weights.
    localizer = with_random_fallback(build, args.backbone) if not args.images else build(args.backbone)
    info = localizer.backbone.info
    if info.pipeline_check:
        print(f"note: {info.pipeline_check}", file=sys.stderr)
    explainer = Explainer(localizer, threshold=args.threshold)
    explainer.check(args.method, args.target)  # a bad --target fails once, before any image
    for folder in (args.out_dir, args.plot.parent if args.plot else None):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    several = len(images) > 1 or any(Path(image).is_dir() for image in images)
    overlays = OverlayNames(args.out_dir) if args.out_dir else None
    plots = OverlayNames(args.plot.parent) if args.plot else None
    loop = ImageLoop(images, localizer.prepare)
    for image, prepared in loop:
        if args.sanity_check:
            report = sanity_check(explainer, prepared, method=args.method, target=args.target, seed=args.seed)
            res = report.original
        else:
            res = explainer(prepared, method=args.method, target=args.target)
        record = {"image": image, **res.to_json(), "backbone": info.name, "weights_sha256": info.sha256}
        if overlays:
            out = overlays(image, info.name, args.method)
            Image.fromarray(cam_figure(prepared.rgb, res, info.name, info.pipeline_check)).save(out)
            record["overlay"] = str(out)
        if args.sanity_check:
            record["sanity"] = [s.to_json() for s in report.steps]
            print(f"sanity check, {image} ({args.method}, target {res.target_name}):\n{report.table()}", file=sys.stderr)
            if args.plot:
                path = _plot_path(args.plot, image, info.name, several, plots)
                plot_sanity(report, prepared.rgb, path)
                record["plot"] = str(path)
        print(json.dumps(record), flush=True)
    return loop.exit_code
