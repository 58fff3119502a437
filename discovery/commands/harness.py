"""``discovery eval ...`` and ``discovery app ...``: the CorLoc harness and the Gradio app, which ship
inside the package as ``discovery.eval`` and ``discovery.app`` (the checkout's ``eval/`` and ``app/``).

Only the command line reaches them, and only when asked: the library itself never imports them.
Every argument after the command name goes to their own parser.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from types import ModuleType

#: command → (module under ``discovery``, one line of help)
HARNESS = {
    "eval": ("eval.cli", "CorLoc on VOC07 / VOC12 / COCO20k: run, score, synth, fetch (`discovery eval --help`)"),
    "app": ("app.main", "start the Gradio app on 127.0.0.1:7860 (`discovery app --help`)"),
    "reproduce": ("eval.reproduce", "the seed paper's Table 5: LOST CorLoc of imagenet / dino before and after PUL (`discovery reproduce --help`)"),
}


def harness_module(module: str) -> ModuleType:
    """``discovery.<module>`` when installed (e.g. ``discovery.eval.monitor``). In a checkout the
    top-level ``eval/`` / ``app/`` beside this ``discovery/`` come first: they are the same revision
    (an editable install of another checkout would otherwise map ``discovery.eval`` to its folder)."""
    package = module.split(".", 1)[0]
    sibling = Path(__file__).resolve().parents[2] / package
    if (sibling / "__init__.py").is_file():
        try:
            found = importlib.import_module(module)
        except ModuleNotFoundError:
            found = None
        if found is not None and Path(found.__file__).resolve().is_relative_to(sibling):
            return found
    try:
        return importlib.import_module(f"discovery.{module}")
    except ModuleNotFoundError as err:
        if err.name != f"discovery.{package}":
            raise
        return importlib.import_module(module)


def entry(command: str) -> ModuleType:
    """The module holding ``main(argv, prog)`` for ``command``: ``discovery.eval.cli`` when installed."""
    return harness_module(HARNESS[command][0])


def register(sub: argparse._SubParsersAction) -> None:
    # Listed for `discovery --help`; discovery.cli.main hands their arguments over before parsing.
    for command, (_, help_text) in HARNESS.items():
        sub.add_parser(command, help=help_text, add_help=False)


def run(command: str, argv: list[str]) -> int:
    return int(entry(command).main(argv, prog=f"discovery {command}") or 0)
