"""``discovery`` console script: a thin argparse layer on top of everything else.

The library's commands live in ``discovery/commands/<name>.py``, each with ``register(subparsers)``,
which adds its parser and sets ``run=`` to a function ``(args) -> exit code``. ``discovery eval``,
``discovery reproduce`` and ``discovery app`` hand their arguments to the harness's and the app's own
parsers (``discovery.eval``, ``discovery.app``), imported only when asked for. User mistakes (bad
images, missing weights, bad arguments) end in one ``error:`` line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from . import options
from .commands import cad, demo, explain, locate, pul, weights
from .images import ImageError
from .weights import WeightsError

COMMANDS = (locate, demo, weights, explain, pul, cad)

#: commands whose arguments go to another parser → one line of help
HARNESS = {
    "eval": "CorLoc on VOC07 / VOC12 / COCO20k: run, score, synth, fetch (`discovery eval --help`)",
    "app": "start the Gradio app on 127.0.0.1:7860 (`discovery app --help`)",
    "reproduce": "the seed paper's Table 5: LOST CorLoc of imagenet / dino before and after PUL (`discovery reproduce --help`)",
}

# OSError covers missing, existing, unwritable and unreadable paths.
USER_ERRORS = (WeightsError, ImageError, ValueError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = options.Parser(
        prog="discovery",
        description="Object discovery (LOST), saliency (Grad-CAM / EigenCAM), CorLoc evaluation and PUL refinement.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    for name, help_text in HARNESS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def run_harness(command: str, argv: list[str]) -> int:
    """``discovery eval|reproduce|app ARGS``: the harness's or the app's own ``main``."""
    prog = f"discovery {command}"
    if command == "eval":
        from .eval.cli import main
    elif command == "reproduce":
        from .eval.reproduce import main
    else:
        from .app.main import main
    return int(main(argv, prog=prog) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in HARNESS:
        return run_harness(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
