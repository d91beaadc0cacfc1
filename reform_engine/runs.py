"""A run directory: config, status/progress, metrics, log and checkpoints of one job.

Layout of ``run_dir``::

    config.json     the job's config, written once at start
    status.json     {state, progress, step, total, message, pid, updated_at}; rewritten atomically
    metrics.json    the job's result, written at the end
    log.txt         append-only human log
    checkpoint/     the latest complete checkpoint (replaced by rename, never written in place)
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

STATES = ("pending", "running", "succeeded", "failed", "cancelled")


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    return obj


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True))


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default


@contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp directory beside ``final``; on success swap it into place by rename.

    A process killed inside the block leaves ``final`` as it was (the previous checkpoint) plus a
    ``.tmp`` directory that the next save removes.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


class RunDir:
    """Writes the files of one run; every write is atomic so a reader never sees half a file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._status: dict[str, Any] = read_json(self.status_path, {}) or {}

    status_path = property(lambda self: self.path / "status.json")
    checkpoint_path = property(lambda self: self.path / "checkpoint")
    log_path = property(lambda self: self.path / "log.txt")
    metrics_path = property(lambda self: self.path / "metrics.json")

    def write_config(self, config: Any) -> None:
        atomic_write_json(self.path / "config.json", config)

    def log(self, message: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def set_status(self, state: str | None = None, **fields: Any) -> dict[str, Any]:
        if state is not None:
            if state not in STATES:
                raise ValueError(f"state={state!r}; use one of {STATES}")
            self._status["state"] = state
        self._status.update(to_jsonable(fields))
        self._status["pid"] = os.getpid()
        self._status["updated_at"] = time.time()
        atomic_write_json(self.status_path, self._status)
        return dict(self._status)

    def progress(self, step: int, total: int, **fields: Any) -> None:
        self.set_status("running", step=step, total=total, progress=step / max(total, 1), **fields)

    def write_metrics(self, metrics: Any) -> None:
        atomic_write_json(self.metrics_path, metrics)

    def status(self) -> dict[str, Any]:
        return read_json(self.status_path, {}) or {}


@contextmanager
def job_run(run_dir: str | os.PathLike, config: Any, message: str = "starting") -> Iterator[RunDir]:
    """The frame of every job: write the config, mark running, and on any exception mark failed
    (with the error in status and log) before re-raising. The job marks success itself."""
    run = RunDir(run_dir)
    run.write_config(config)
    run.set_status("running", progress=0.0, message=message)
    try:
        yield run
    except BaseException as exc:
        run.set_status("failed", message=f"{type(exc).__name__}: {exc}")
        run.log(f"failed: {type(exc).__name__}: {exc}")
        raise
