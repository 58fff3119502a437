"""``discovery photos --root R``: write the small real-photo benchmark (:mod:`discovery.eval.photos`)
in the VOC layout ``eval run --dataset voc07 --root R`` and ``discovery compare`` read."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(p: argparse.ArgumentParser) -> None:
    """The options of `discovery photos`."""
    p.add_argument("--root", type=Path, required=True, help="folder to write VOCdevkit/VOC2007 into")
    p.add_argument("--overwrite", action="store_true", help="replace a VOCdevkit/ already in --root")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.photos import write_photos

    written = write_photos(args.root, args.overwrite)
    print(json.dumps({"root": str(written.root), "dataset": "voc07", "images": len(written),
                      "photos": list(written.names), "missing": list(written.missing)}))
    return 0
