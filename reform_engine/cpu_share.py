"""Sharing the cores between the app's own model work and the background jobs of one machine.

Two torch processes that together ask for more threads than there are cores slow each other down many
times over (a training step of 6 s took 24 s beside the app's scoring on 2 cores, although the app had
already dropped to one thread: the job kept its two). So the two sides meet halfway:

- the app announces each piece of model work it runs (scoring, a trace, a decoding) with the number of
  threads it uses, as a small *claim* file in a directory every process of this user on this machine
  sees (:func:`claim`; ``REFORM_CPU_DIR`` overrides where);
- a job process runs a :class:`ThreadGovernor`, which looks at the claims a few times a second, from a
  hook that runs before every module's forward, and gives the job's thread the cores the claims leave
  (at least one); when the claims go away the job takes its own threads back.

A claim whose process has died (a killed server) no longer counts and is removed by the next reader, so
a crash never leaves a job on one thread for good.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

CPU_DIR_ENV = "REFORM_CPU_DIR"
CHECK_SECONDS = 0.25   # how stale a job's view of the claims may be: a fraction of a training step


def claims_dir() -> Path:
    """Where claims live: ``REFORM_CPU_DIR``, else one folder per user in the system's temp folder."""
    raw = os.environ.get(CPU_DIR_ENV)
    return Path(raw) if raw else Path(tempfile.gettempdir()) / f"reform-cpu-{os.getuid()}"


def _process_start(pid: int) -> str | None:
    from .jobs import _proc_stat

    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


class Claim:
    """One announced piece of model work: ``threads`` torch threads busy in this process until
    :meth:`release`. :meth:`update` changes the count (the app re-caps between batches)."""

    def __init__(self, threads: int, directory: Path | None = None):
        self.path = (directory or claims_dir()) / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.threads = -1
        self.update(threads)

    def update(self, threads: int) -> None:
        threads = max(1, int(threads))
        if threads == self.threads:
            return
        self.threads = threads
        body = {"pid": os.getpid(), "proc_start": _process_start(os.getpid()), "threads": threads}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body), encoding="utf-8")
        os.replace(tmp, self.path)   # a reader sees the old claim or the new one, never half of one

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@contextlib.contextmanager
def claim(threads: int, directory: Path | None = None) -> Iterator[Claim]:
    """Announce ``threads`` busy threads of this process for the duration of the block. A claim that
    cannot be written (a read-only temp folder) must not stop the model work: jobs then just do not yield."""
    try:
        held = Claim(threads, directory)
    except OSError:
        yield _NoClaim()
        return
    try:
        yield held
    finally:
        held.release()


class _NoClaim:
    threads = 0

    def update(self, threads: int) -> None: ...

    def release(self) -> None: ...


def claimed_threads(directory: Path | None = None, *, exclude_pid: int | None = None) -> int:
    """Threads claimed now by live processes (other than ``exclude_pid``); claims of dead processes are
    removed on the way."""
    from .jobs import process_alive

    folder = directory or claims_dir()
    total = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.endswith(".json"):
            continue
        try:
            body = json.loads(Path(entry.path).read_text(encoding="utf-8"))
            pid, start, threads = int(body["pid"]), body.get("proc_start"), int(body["threads"])
        except (OSError, ValueError, KeyError, TypeError):
            continue   # being replaced, or not ours: the next look reads it
        if pid == exclude_pid:
            continue
        if not process_alive(pid, start):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
            continue
        total += max(0, threads)
    return total


def job_threads(full: int, cores: int, claimed: int) -> int:
    """A job's torch threads when the app claims ``claimed`` of ``cores``: what is left, at least 1 and
    at most ``full`` (the job's own setting)."""
    return max(1, min(full, cores - claimed))


class ThreadGovernor:
    """Keeps a job's torch threads to the cores the app's claims leave. :meth:`install` hooks it before
    every module's forward (so it reacts within a fraction of a step); it acts only in the thread that
    installed it, because torch keeps a thread count per thread."""

    def __init__(self, full: int, cores: int, *, directory: Path | None = None, check_every: float = CHECK_SECONDS,
                 clock: Callable[[], float] = time.monotonic, set_threads: Callable[[int], None] | None = None):
        import torch

        self.full, self.cores, self.directory, self.check_every, self.clock = full, cores, directory, check_every, clock
        self._set = set_threads or torch.set_num_threads
        self.threads, self._checked_at, self._owner, self._handle = full, -float("inf"), threading.get_ident(), None
        self.changes: list[int] = []   # every thread count it set, in order (shown in the job's log)

    def check(self) -> int:
        """Look at the claims if the last look is older than ``check_every`` -> the threads now."""
        now = self.clock()
        if now - self._checked_at < self.check_every or threading.get_ident() != self._owner:
            return self.threads
        self._checked_at = now
        want = job_threads(self.full, self.cores, claimed_threads(self.directory, exclude_pid=os.getpid()))
        if want != self.threads:
            self._set(want)
            self.threads = want
            self.changes.append(want)
        return self.threads

    def install(self) -> ThreadGovernor:
        from torch.nn.modules.module import register_module_forward_pre_hook

        self._handle = register_module_forward_pre_hook(self._before_forward)
        return self

    def _before_forward(self, module, args) -> None:
        self.check()   # returns nothing: a forward pre-hook that returned a value would replace the inputs

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.threads != self.full:
            self._set(self.full)
            self.threads = self.full
