"""The harness's user errors: exceptions whose text is meant for the user, and the one place where
a command turns them into one ``error:`` line and exit status 2 (never a traceback)."""

from __future__ import annotations

import argparse
import sys

from discovery.images import ImageError
from discovery.splits import DatasetError
from discovery.weights import WeightsError

from .predictions import PredictionsError


class RunError(Exception):
    """A run that cannot go on; the text is for the user. ``quiet``: another rank reports it."""

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet


#: Exceptions whose text is one line for the user (``OSError``: missing, unwritable or unreadable paths).
USER_ERRORS = (RunError, DatasetError, PredictionsError, WeightsError, ImageError, ValueError, OSError)


def run_parsed(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and run ``args.run``; user mistakes become one ``error:`` line and status 2."""
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as err:
        if not getattr(err, "quiet", False):
            print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130
