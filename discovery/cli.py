"""``discovery`` console script: a thin argparse layer on top of everything else.

The library's commands live in ``discovery/commands/<name>.py``, each with ``register(parser)``,
which adds its options and sets ``run=`` to a function ``(args) -> exit code``. Only the command
asked for is imported (``discovery --help`` and argument errors need no torch). ``discovery eval``,
``discovery reproduce`` and ``discovery app`` hand their arguments to the harness's and the app's
own parsers (``discovery.eval``, ``discovery.app``). User mistakes (bad images, missing weights,
bad arguments) end in one ``error:`` line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from . import __version__, options

#: the library's commands → one line of help
COMMANDS = {
    "locate": "find the object in images with LOST (or TokenCut: --method tokencut)",
    "demo": "localize a bundled example photo and save the overlay",
    "weights": "list, fetch, verify and locate weights files",
    "explain": "explain what the network looked at (Grad-CAM / EigenCAM)",
    "pul": "refine a backbone on random labels (PUL), plot its training dynamics",
    "cad": "train a class-agnostic detector on discovered boxes (LOST+CAD)",
    "compare": "backbones side by side (a base and its PUL checkpoints): LOST, Grad-CAM, function change, CorLoc",
    "photos": "write the small real-photo benchmark with boxes (VOC layout) from installed packages",
    "study": "PUL settings grid from one base on the real photos: dynamics, function kept, maps moved, CorLoc",
}
#: commands whose arguments go to another parser → one line of help
HARNESS = {
    "eval": "CorLoc on VOC07 / VOC12 / COCO20k: run, score, synth, fetch (`discovery eval --help`)",
    "app": "start the Gradio app on 127.0.0.1:7860 (`discovery app --help`)",
    "reproduce": "the seed paper's Table 5: CorLoc before and after PUL, LOST on imagenet / dino, LOST and TokenCut on DINO's ViTs (`discovery reproduce --help`)",
}


def command_module(name: str) -> ModuleType:
    if name == "locate":
        from .commands import locate as module
    elif name == "demo":
        from .commands import demo as module
    elif name == "weights":
        from .commands import weights as module
    elif name == "explain":
        from .commands import explain as module
    elif name == "pul":
        from .commands import pul as module
    elif name == "compare":
        from .commands import compare as module
    elif name == "photos":
        from .commands import photos as module
    elif name == "study":
        from .commands import study as module
    else:
        from .commands import cad as module
    return module


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; ``only``: fill in that command alone (the others are listed, not imported),
    or none at all for a name that is no command."""
    parser = options.Parser(
        prog="discovery",
        description="Object discovery (LOST), saliency (Grad-CAM / EigenCAM), CorLoc evaluation and PUL refinement.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        if only is None or only == name:
            command_module(name).register(command)
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


def _user_errors() -> tuple[type[BaseException], ...]:
    # OSError covers missing, existing, unwritable and unreadable paths.
    from .images import ImageError
    from .weights import WeightsError

    return (WeightsError, ImageError, ValueError, OSError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in HARNESS:
        return run_harness(argv[0], argv[1:])
    args = build_parser(only=argv[0] if argv and argv[0] in COMMANDS else "").parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
