"""``discovery`` console script: a thin argparse layer over the library.

Each subcommand lives in ``discovery/commands/<name>.py`` and provides ``register(subparsers)``,
which adds its parser and sets ``run=`` to a function ``(args) -> exit code``.
User mistakes (bad images, missing weights, bad arguments) end in one ``error:`` line, never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .backbones import STRIDES
from .commands import harness
from .commands.harness import HARNESS
from .images import ImageError
from .weights import WeightsError, backbone_names

COMMANDS = ("locate", "demo", "weights", "explain", "pul", "cad", "harness")

# OSError covers missing, existing, unwritable and unreadable paths.
USER_ERRORS = (WeightsError, ImageError, ValueError, OSError)


def add_backbone_args(parser: argparse.ArgumentParser, default: str = "imagenet") -> None:
    """The options every model-running command shares."""
    parser.add_argument("--backbone", default=default, help=f"one of: {', '.join(backbone_names())} (default {default})")
    parser.add_argument("--stride", type=int, default=16, choices=STRIDES, help="layer4 output stride (default 16)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--weights-dir", default=None, help="folder of weights files (default: $DISCOVERY_WEIGHTS_DIR, a checkout's weights/, else the torch hub cache)")


class ImageLoop:
    """Iterate ``(image, load(image))`` over user-given images; an unreadable one gets one
    ``error: <file>: <reason>`` line on stderr and is counted, and the others still run.

    ``exit_code`` is 1 once any image failed, else 0.
    """

    def __init__(self, images, load):
        self.images, self.load, self.failed = list(images), load, 0

    def __iter__(self):
        for image in self.images:
            try:
                loaded = self.load(image)
            except ImageError as err:
                print(f"error: {image}: {err}", file=sys.stderr)
                self.failed += 1
                continue
            yield image, loaded

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="discovery",
        description="Object discovery (LOST), saliency (Grad-CAM / EigenCAM), CorLoc evaluation and PUL refinement.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in HARNESS:  # `discovery eval ...` / `discovery app ...`: their own parsers
        return harness.run(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
