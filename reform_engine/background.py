"""In-process background work for an interactive front end: a thread that runs one function and
reports its progress.

The app keeps a model loaded in its own process, so short-to-medium work that needs that model
(loading or converting a model, scoring a dataset with the loaded RM) runs here in a thread while the
page keeps drawing; long jobs that must survive the app (training) are separate processes (jobs.py).
The page polls ``state`` / ``progress`` / ``message``; the function reports through the callback it
is given: ``fn(report)`` with ``report(done, total, message="")``.
"""
from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Callable

from .eta import ProgressClock

_LIVE: "weakref.WeakSet[BackgroundTask]" = weakref.WeakSet()


class BackgroundTask:
    """Starts ``fn(report)`` in a daemon thread at construction. Read-only from outside; the thread
    alone writes the fields, each a single assignment, so a reader never sees a torn value."""

    def __init__(self, fn: Callable[[Callable[..., None]], Any], name: str = "task", *,
                 clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.state = "running"
        self.done: int = 0
        self.total: int | None = None              # None: no measure of progress (e.g. a model conversion)
        self.message = "starting"
        self.result: Any = None
        self.error: BaseException | None = None
        self.remaining: float | None = None        # seconds left in the current phase at its rate so far (eta.py)
        self._clock = clock
        self._progress_clock = ProgressClock(clock)
        self.started_at = clock()
        self.finished_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=f"reform-{name}", daemon=True)
        _LIVE.add(self)
        self._thread.start()

    def _report(self, done: int, total: int | None = None, message: str = "") -> None:
        self.done, self.total = int(done), (int(total) if total is not None else self.total)
        self.remaining = self._progress_clock.observe(self.done, self.total)
        if message:
            self.message = message

    def _run(self, fn) -> None:
        try:
            self.result = fn(self._report)
            self.state = "succeeded"
            self.message = "done"
        except BaseException as exc:  # reported to the page, never raised into a thread nobody joins
            self.error = exc
            self.message = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
        finally:
            self.remaining = None
            self.finished_at = self._clock()

    @property
    def finished(self) -> bool:
        return self.state != "running"

    @property
    def progress(self) -> float | None:
        """Share done in [0, 1], or None when the work has no measure of progress."""
        if self.state == "succeeded":
            return 1.0
        if not self.total:
            return None
        return min(1.0, self.done / self.total)

    @property
    def elapsed(self) -> float:
        return (self.finished_at or self._clock()) - self.started_at

    def wait(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds for the task; -> whether it has finished."""
        self._thread.join(timeout)
        return self.finished


def wait_all(timeout: float | None = None) -> bool:
    """Wait for every task still running (e.g. before the interpreter exits, so no thread is cut off
    inside a native call); -> whether all have finished."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for task in list(_LIVE):
        task.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return all(t.finished for t in list(_LIVE))
