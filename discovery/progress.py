"""Progress of a long loop on stderr (the trainers' steps, ``eval run``'s images), and the trainers'
one-line estimate of the time left.

On a terminal it is a tqdm bar. In a log file (stderr not a TTY) a bar's carriage-return updates
make one unreadable line, so :class:`Progress` prints a plain line instead every
``DISCOVERY_PROGRESS_INTERVAL`` seconds (default 30; 0: at every update) and one at the end.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from types import TracebackType

from tqdm import tqdm

INTERVAL_ENV = "DISCOVERY_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0
#: the time-left estimate is printed after this many updates or this many seconds, whichever comes first
ESTIMATE_AFTER_STEPS = 3
ESTIMATE_AFTER_SECONDS = 20.0
PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def log_interval() -> float:
    """Seconds between plain progress lines: ``DISCOVERY_PROGRESS_INTERVAL`` or 30."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"{INTERVAL_ENV} must be a number of seconds >= 0 (got {text!r})")
    return value


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``1 h 23 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def estimate_line(desc: str, unit: str, rate: float, left: int, total: int, target: int) -> str:
    """``cad train: ~1 h 23 min left at 5.6 s/iteration (10000 iterations)``; ``rate`` in seconds per unit."""
    rate_text = f"{rate:.1f}" if rate >= 0.1 else f"{rate:.3f}"
    stop = f", stopping after {target}" if target < total else ""
    return f"{desc}: ~{duration(rate * left)} left at {rate_text} s/{unit} ({total} {unit}s{stop})"


class Progress:
    """``update(n, postfix)`` after each piece of work, ``close()`` at the end (or use ``with``).

    Args:
        desc, unit, total, initial: as tqdm's (``initial``: done before this session).
        show: draw the bar / print the lines (rank 0 with progress on).
        say: where the time-left estimate goes, printed once after :data:`ESTIMATE_AFTER_STEPS`
            updates or :data:`ESTIMATE_AFTER_SECONDS` seconds (``None``: no estimate); it is
            printed whether or not ``show`` is on.
        target: where this session stops (default ``total``; the estimate counts to it).
    """

    def __init__(self, desc: str, unit: str, total: int, initial: int = 0, show: bool = True,
                 say: Callable[[str], None] | None = None, target: int | None = None):
        self.desc, self.unit, self.total, self.initial, self.n = desc, unit, total, initial, initial
        self.target = total if target is None else min(target, total)
        self.say, self.postfix, self.printed = say, "", None
        self.start = self.last_line = time.perf_counter()
        self.interval = log_interval()
        terminal = show and sys.stderr.isatty()
        self.plain = show and not terminal
        self.bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True) if terminal else None

    def update(self, n: int = 1, postfix: Mapping[str, str] | None = None) -> None:
        self.n += n
        self.postfix = ", ".join(f"{k}={v}" for k, v in (postfix or {}).items())
        if self.bar is not None:
            self.bar.set_postfix(postfix or {}, refresh=False)
            self.bar.update(n)
        now = time.perf_counter()
        if self.plain and now - self.last_line >= self.interval:
            self.line(now)
        if self.say is not None:
            self.estimate(now)

    def estimate(self, now: float) -> None:
        done, elapsed = self.n - self.initial, now - self.start
        if done < ESTIMATE_AFTER_STEPS and elapsed < ESTIMATE_AFTER_SECONDS:
            return
        say, self.say = self.say, None
        if self.n < self.target:
            message = estimate_line(self.desc, self.unit, elapsed / done, self.target - self.n, self.total, self.target)
            if self.bar is None:
                say(message)
            else:
                with tqdm.external_write_mode():
                    say(message)

    def line(self, now: float) -> None:
        """One plain progress line on stderr."""
        self.last_line, self.printed = now, self.n
        text = tqdm.format_meter(self.n, self.total, now - self.start, prefix=self.desc, unit=self.unit,
                                 postfix=self.postfix or None, initial=self.initial, bar_format=PLAIN_FORMAT)
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.plain and self.printed != self.n:
            self.line(time.perf_counter())
        self.plain = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
