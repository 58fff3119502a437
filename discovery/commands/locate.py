"""``discovery locate IMAGE...``: one JSON line per image (LOST's box, or TokenCut's with
``--method tokencut``), optional overlay PNGs; with ``--detector FILE`` the boxes and scores of a
trained detector (``discovery cad train``) instead."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import options
from ..defaults import DEFAULT_MAX_SIDE, DEFAULT_TAU, DISCOVERY_METHODS

# Heavy modules (torch, the models) are imported in the functions that run, so parsing is quick.


def register(p: argparse.ArgumentParser) -> None:
    """The options of `discovery locate`."""
    p.add_argument("images", nargs="+", metavar="IMAGE")
    options.add_model(p)
    p.add_argument("--method", default="lost", choices=DISCOVERY_METHODS, help="discovery method (default lost)")
    options.add_k(p)
    options.add_tau(p, DEFAULT_TAU)
    options.add_max_side(p, DEFAULT_MAX_SIDE)
    p.add_argument("--out-dir", type=Path, default=None, help="write <image>_<backbone>_<method>.png overlays here")
    options.add_alias(p, "--overlay-dir", "--out-dir", type=Path)
    p.add_argument("--detector", type=Path, default=None, metavar="FILE",
                   help="print the boxes and scores of this detector (`discovery cad train`) instead of LOST's box")
    p.add_argument("--top-k", type=options.positive_int, default=5, help="with --detector: boxes per image (default 5)")
    p.set_defaults(run=run)


def run_detector(args: argparse.Namespace) -> int:
    from ..detector import Detector
    from .common import ImageLoop

    if args.out_dir:
        raise ValueError("--out-dir draws LOST's panels; it does not apply with --detector")
    if args.method != "lost":
        raise ValueError("--method chooses the discovery method; it does not apply with --detector")
    detector = Detector(args.detector, device=args.device, max_side=args.max_side or None)
    if detector.pipeline_check:
        print(f"note: {detector.pipeline_check}", file=sys.stderr)
    loop = ImageLoop(args.images, lambda image: detector(image, top_k=args.top_k))
    for image, found in loop:
        print(json.dumps({"image": image, **found.to_json(), "detector_sha256": detector.sha256}), flush=True)
    return loop.exit_code


def run(args: argparse.Namespace) -> int:
    if args.detector is not None:
        return run_detector(args)
    from PIL import Image

    from ..localizer import Localizer
    from .common import ImageLoop, OverlayNames, lost_figure

    localizer = Localizer(
        args.backbone, device=args.device, stride=args.stride,
        max_side=args.max_side or None, weights_dir=args.weights_dir, features=args.features,
    )
    note = localizer.backbone.info.pipeline_check
    if note:
        print(f"note: {note}", file=sys.stderr)
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    names = OverlayNames(args.out_dir) if args.out_dir else None
    loop = ImageLoop(args.images, localizer.embed)
    for image, emb in loop:
        loc = localizer.localize(emb, k=args.k, method=args.method, tau=args.tau)
        record = {"image": image, **loc.to_json()}
        if names:
            out = names(image, loc.backbone, args.method)
            Image.fromarray(lost_figure(emb, loc, note)).save(out)
            record["overlay"] = str(out)
        print(json.dumps(record), flush=True)
    return loop.exit_code
