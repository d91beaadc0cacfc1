"""Taking turns on a file among threads and processes, first come, first served.

Exclusion is an advisory ``flock`` on the lock file itself: the kernel drops it when its holder dies,
even by SIGKILL, so a killed holder never blocks anyone. ``flock`` alone is not fair, though: a
waiter polling with backoff loses, again and again, to a holder that releases and asks at once
(measured in benchmarks/RESULTS.md, "Issue 11": a reader polling behind 4 busy writers got 5 turns in
65 s). So waiters queue first, FIFO, through a folder beside the lock file (``<lock>.queue/``):

- a waiter takes the next ticket from a counter file, under a short ``flock`` of that file, and in
  the same breath creates and ``flock``\\ s its own entry file, named by its ticket; entries thus exist
  in ticket order;
- it then waits until no live entry with a smaller ticket is left: an entry is live while its
  ``flock`` is held, so a waiter that died (SIGKILL) is skipped at once, and removed by the next
  ticket-taker;
- its turn over, it deletes its entry and closes it, which wakes the next in line.

Each waiter watches only the nearest live entry ahead of it (polled every few milliseconds: ``flock``
has no wait with a timeout), so a hand-over costs a few milliseconds and no waiter is overtaken.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: threads still take turns; other processes are waited out by open retries
    fcntl = None

POLL_MIN, POLL_MAX = 0.0002, 0.004   # seconds between looks at the waiter ahead: a hand-over costs at most this
_DIGITS = 12                        # entry files are zero-padded tickets, so names sort as tickets do
_held = threading.local()
_thread_turn = threading.Lock()     # used only where flock is missing


def queue_dir(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".queue")


def waiting(lock_path: Path) -> int:
    """How many entries (waiting or holding the turn, live or dead) the queue has right now."""
    try:
        return sum(name.isdigit() for name in os.listdir(queue_dir(lock_path)))
    except FileNotFoundError:
        return 0


def _live(path: Path) -> bool:
    """Whether the waiter owning this entry still holds it (a dead or finished one does not)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock just taken, if any


def _tickets(folder: Path) -> list[int]:
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def _enqueue(folder: Path) -> tuple[int, int]:
    """-> (ticket, fd of this waiter's locked entry file)."""
    folder.mkdir(exist_ok=True)
    counter = os.open(folder / "next", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(counter, fcntl.LOCK_EX)  # held for a few syscalls: numbering and registering only
        present = _tickets(folder)
        for t in present:  # entries of waiters that died: only here, where no entry is between creation and lock
            path = folder / f"{t:0{_DIGITS}d}"
            if not _live(path):
                path.unlink(missing_ok=True)
        raw = os.pread(counter, 32, 0).strip()
        ticket = max(int(raw) if raw.isdigit() else 0, present[-1] + 1 if present else 0)
        os.pwrite(counter, str(ticket + 1).encode().ljust(24), 0)
        entry = os.open(folder / f"{ticket:0{_DIGITS}d}", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(entry, fcntl.LOCK_EX)  # a new file: never blocks
        return ticket, entry
    finally:
        os.close(counter)


def _wait_ahead(folder: Path, ticket: int, deadline: float, busy: Callable[[], Exception]) -> None:
    delay = POLL_MIN
    while True:
        ahead = [t for t in _tickets(folder) if t < ticket]
        nearest = next((folder / f"{t:0{_DIGITS}d}" for t in reversed(ahead) if _live(folder / f"{t:0{_DIGITS}d}")), None)
        if nearest is None:
            return
        while _live(nearest):
            if time.monotonic() > deadline:
                raise busy()
            time.sleep(delay)
            delay = min(delay * 2, POLL_MAX)


@contextmanager
def turn(lock_path: Path, deadline: float, busy: Callable[[], Exception]) -> Iterator[None]:
    """Exclusive use of whatever ``lock_path`` guards, among all threads and processes using this
    function, in the order they asked; ``busy()`` is raised when ``deadline`` (time.monotonic) passes
    first. Turns must not nest within a thread."""
    if getattr(_held, "busy", False):
        raise RuntimeError("Store calls must not nest (the outer call holds the database)")
    if fcntl is None:
        with _thread_turn:
            _held.busy = True
            try:
                yield
            finally:
                _held.busy = False
        return
    folder = queue_dir(lock_path)
    ticket, entry = _enqueue(folder)
    fd = None
    try:
        _wait_ahead(folder, ticket, deadline, busy)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        delay = POLL_MIN
        while True:  # free by now, unless a program outside the queue holds it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise busy() from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        _held.busy = True
        yield
    finally:
        _held.busy = False
        if fd is not None:
            os.close(fd)  # releases the flock
        (folder / f"{ticket:0{_DIGITS}d}").unlink(missing_ok=True)
        os.close(entry)  # the next in line sees this entry gone or unlocked
