"""``discovery eval ...`` and ``discovery app ...``: the CorLoc harness and the Gradio app, which ship
inside the package as ``discovery.eval`` and ``discovery.app`` (the checkout's ``eval/`` and ``app/``).

Only the command line reaches them, and only when asked: the library itself never imports them.
Every argument after the command name goes to their own parser.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

#: command → (module under ``discovery``, one line of help)
HARNESS = {
    "eval": ("eval.cli", "CorLoc on VOC07 / VOC12 / COCO20k: run, score, synth, fetch (`discovery eval --help`)"),
    "app": ("app.main", "start the Gradio app on 127.0.0.1:7860 (`discovery app --help`)"),
}


def entry(command: str) -> ModuleType:
    """The module holding ``main(argv, prog)`` for ``command``: ``discovery.eval.cli`` when installed.

    A checkout used without installing has ``eval/`` and ``app/`` as top-level packages instead.
    """
    module = HARNESS[command][0]
    try:
        return importlib.import_module(f"discovery.{module}")
    except ModuleNotFoundError as err:
        if err.name != f"discovery.{command}":
            raise
        return importlib.import_module(module)


def register(sub: argparse._SubParsersAction) -> None:
    # Listed for `discovery --help`; discovery.cli.main hands their arguments over before parsing.
    for command, (_, help_text) in HARNESS.items():
        sub.add_parser(command, help=help_text, add_help=False)


def run(command: str, argv: list[str]) -> int:
    return int(entry(command).main(argv, prog=f"discovery {command}") or 0)
