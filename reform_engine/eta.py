"""How long is left: the remaining time of counted work (pairs scored, steps trained, tokens decoded)
from its rate so far, and the one line a progress bar shows.

Work often comes in phases with their own counts (load, then score 2N responses, then decode M
variants). A :class:`ProgressClock` times each phase from its own start: a new total, or a count that
goes back, starts a new phase, so the time spent loading or in an earlier phase never slows the
estimate down. The clock is injected, so tests give the times.
"""
from __future__ import annotations

import math
import time
from typing import Callable


def remaining_seconds(done: float, total: float, elapsed: float, done_at_start: float = 0) -> float | None:
    """Seconds left at the rate so far: ``elapsed`` seconds did ``done - done_at_start`` units and
    ``total - done`` are left. None while nothing measurable was done (no rate yet)."""
    did = done - done_at_start
    if total is None or did <= 0 or elapsed <= 0:
        return None
    return max(0.0, total - done) * elapsed / did


def format_remaining(seconds: float | None) -> str:
    """'about 40 s left', 'about 3 min left', 'about 1 h 5 min left'; '' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    s = round(seconds)
    if s < 60:
        return f"about {max(s, 1)} s left"
    m = round(seconds / 60)
    if m < 60:
        return f"about {m} min left"
    return f"about {m // 60} h {m % 60} min left"


class ProgressClock:
    """Feed it (done, total) as they come; it answers the seconds left in the current phase.
    ``started``: when the work began, on the same clock (e.g. a job's start, first seen part-way
    through), so the first phase is timed from there rather than from the first look."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, started: float | None = None):
        self.clock = clock
        self._started = started
        self._origin: tuple[float, float] | None = None   # (time, done) at the start of this phase
        self._total: float | None = None
        self._done: float = 0

    def observe(self, done: float, total: float | None, now: float | None = None) -> float | None:
        """Record the count -> seconds left (None: no total, or no rate yet)."""
        now = self.clock() if now is None else now
        if self._origin is None or total != self._total or done < self._done:
            first = self._origin is None and self._started is not None
            self._origin = (self._started, 0) if first else (now, done)
        self._total, self._done = total, done
        if not total:
            return None
        t0, d0 = self._origin
        return remaining_seconds(done, total, now - t0, d0)


def progress_text(message: str, done: int | None = None, total: int | None = None, remaining: float | None = None) -> str:
    """The text of a progress bar: the message, the count unless the message already gives it, and the
    time left: 'scoring · 5/21 · about 2 min left', never 'step 5/21: step 5/21 …'."""
    parts = [message.strip()] if message and message.strip() else []
    if total and f"{done}/{total}" not in message:
        parts.append(f"{done}/{total}")
    left = format_remaining(remaining)
    if left:
        parts.append(left)
    return " · ".join(parts)
