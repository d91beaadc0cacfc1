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
import errno
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator

try:
    import fcntl
except ImportError:  # not POSIX: swaps in one directory are not serialised between processes
    fcntl = None

STATES = ("queued", "pending", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATES = ("queued", "pending", "running")   # a job in one of these still owns its run directory


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


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` that a kill cannot leave half-written: serialised in memory, then written atomically."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_torch(path: str | os.PathLike) -> tuple[Any, str | None]:
    """What ``atomic_torch_save`` kept at ``path`` (tensors and plain containers only, on the CPU), as
    ``(obj, None)``; ``(None, why)`` when there is no file or it cannot be read, so that the caller
    recomputes instead of failing."""
    import torch

    path = Path(path)
    if not path.is_file():
        return None, "no file"
    try:
        return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception as exc:  # noqa: BLE001 - written by an older version or cut short outside atomic_torch_save
        return None, f"{type(exc).__name__}: {exc}"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True))


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def overwrite_in_place(path: str | os.PathLike, data: bytes) -> None:
    """Rewrite an existing small file over its own blocks, padded with spaces to its old size (JSON
    ignores them): the last resort when a full disk refuses the temp file of an atomic write, since
    no new block is needed. Not atomic; a reader may catch it half-written once."""
    fd = os.open(path, os.O_WRONLY)
    try:
        data += b" " * max(0, os.fstat(fd).st_size - len(data))
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default


def run_state(run_dir: str | os.PathLike) -> str:
    """The state a run directory's status.json records ('' when it has none)."""
    status = read_json(Path(run_dir) / "status.json", {}) or {}
    return str(status.get("state", "")) if isinstance(status, dict) else ""


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` (files first), so a rename of ``root`` never
    publishes names whose data is still only in the page cache."""
    for dirpath, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


@contextmanager
def _swap_lock(parent: Path) -> Iterator[None]:
    """Serialise swaps and recoveries in one directory across processes (a reader recovering
    ``.old`` must not undo a writer's swap half-way): flock on the directory itself, no lock file."""
    if fcntl is None:
        yield
        return
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _old_name(final: Path) -> Path:
    return final.parent / f".{final.name}.old"


def _recover(final: Path) -> bool:
    old = _old_name(final)
    if not old.exists():
        return False
    if final.exists():  # the swap finished; only the clean-up was cut short
        shutil.rmtree(old, ignore_errors=True)
        return False
    os.replace(old, final)  # cut between the two renames: the previous version is the latest complete one
    _fsync_path(final.parent)
    return True


def recover_directory(final: str | os.PathLike) -> bool:
    """Finish a swap of :func:`atomic_directory` that a kill cut short -> whether ``final`` was restored.

    Only ``.<name>.old`` present means the process died between its two renames: that is the
    previous complete version, so it goes back to ``final``. Both present means the swap finished and
    ``.old`` is litter. Harmless when there is nothing to do (a stat); a directory this process may
    not write is left as it is."""
    final = Path(final)
    if not _old_name(final).exists():
        return False
    try:
        with _swap_lock(final.parent):
            return _recover(final)
    except OSError:
        return False


@contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp directory beside ``final``; on success fsync it and swap it into place by rename.

    A process killed inside the block leaves ``final`` as it was (the previous checkpoint) plus a
    ``.tmp`` directory that the next save removes. Killed between the swap's two renames, it leaves
    only ``.<name>.old``: :func:`recover_directory` (run by the next save and by loaders) puts it back.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(final)
    for stale in final.parent.glob(f".{final.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _old_name(final)
    with _swap_lock(final.parent):
        _recover(final)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_path(final.parent)
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
        try:
            atomic_write_json(self.status_path, self._status)
        except OSError as exc:
            if exc.errno not in FULL_DISK or not self.status_path.is_file():
                raise
            overwrite_in_place(self.status_path, json.dumps(to_jsonable(self._status), sort_keys=True).encode("utf-8"))
        return dict(self._status)

    def progress(self, step: int, total: int, **fields: Any) -> None:
        self.set_status("running", step=step, total=total, progress=step / max(total, 1), **fields)

    def write_metrics(self, metrics: Any) -> None:
        atomic_write_json(self.metrics_path, metrics)

    def status(self) -> dict[str, Any]:
        return read_json(self.status_path, {}) or {}


class SilentRun(RunDir):
    """The run directory as the other processes of a multi-process launch see it: only the main
    process writes it, so these write nothing."""

    def __init__(self, path: str | os.PathLike):
        self.path, self._status = Path(path), {}

    def write_config(self, config: Any) -> None: ...
    def log(self, message: str) -> None: ...
    def set_status(self, state: str | None = None, **fields: Any) -> dict[str, Any]: return {}
    def write_metrics(self, metrics: Any) -> None: ...


def _launched_rank() -> int:
    """This process's rank under ``accelerate launch`` / torchrun (0: the main one, or no launch)."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


@contextmanager
def job_run(run_dir: str | os.PathLike, config: Any, message: str = "starting") -> Iterator[RunDir]:
    """The frame of every job: write the config, cap the torch threads at ``config.runtime.threads``,
    mark running, and on any exception mark failed (with the error in status and log) before
    re-raising. In a multi-process launch only the main process writes (the others get a SilentRun)."""
    if _launched_rank() > 0:
        yield SilentRun(run_dir)
        return
    run = RunDir(run_dir)
    run.write_config(config)
    runtime = getattr(config, "runtime", None)
    governor = None
    if runtime is not None:
        from .runtime import set_cpu_threads

        set_cpu_threads(runtime.threads)
        governor = _yield_to_the_app(runtime)
    run.set_status("running", progress=0.0, message=message)
    try:
        yield run
    except BaseException as exc:
        _record_failure(run, exc)
        raise
    finally:
        if governor is not None:
            governor.remove()
            if governor.changes:
                run.log(f"threads changed {len(governor.changes)} times while the app worked beside the job "
                        f"(cpu_share: the job takes the cores the app's claims leave)")


def _yield_to_the_app(runtime: Any):
    """On a CPU, a :class:`cpu_share.ThreadGovernor` hooked before every forward, so the job gives the
    app's model work its cores while it runs (None on a GPU: the app's CPU work does not compete)."""
    import torch

    from .cpu_share import ThreadGovernor
    from .jobs import cpu_cores
    from .runtime import resolve_device

    if resolve_device(runtime.device).type != "cpu":
        return None
    return ThreadGovernor(full=torch.get_num_threads(), cores=cpu_cores()).install()


def job(start: str = "starting", done: Callable[[Any], str] = lambda result: "done"):
    """Make ``fn(config, run) -> result`` a job ``(config, run_dir) -> result`` in the frame of
    :func:`job_run`; when ``fn`` returns, the frame writes the result to metrics.json and marks the run
    succeeded with the message ``done(result)``. ``start``: the status message while it starts."""
    def frame(fn: Callable[[Any, RunDir], Any]) -> Callable[[Any, str | os.PathLike], Any]:
        def run_job(config: Any, run_dir: str | os.PathLike) -> Any:
            with job_run(run_dir, config, start) as run:
                result = fn(config, run)
                run.write_metrics(result)
                total = run._status.get("total")
                run.set_status("succeeded", progress=1.0, message=done(result), **({"step": total} if total else {}))
                return result
        run_job.__name__, run_job.__qualname__, run_job.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        run_job.__module__ = fn.__module__
        return run_job
    return frame


def _record_failure(run: RunDir, exc: BaseException) -> None:
    """Say in status and log why the job failed. A write that fails too (the disk that made the job
    fail is still full) must not hide the job's own error, which the caller re-raises; the job's
    process then tells the store itself (jobs.hand_off)."""
    message = f"{type(exc).__name__}: {exc}"
    try:
        run.set_status("failed", message=message)
    except OSError as write_error:
        with suppress(OSError):
            print(f"status.json not updated ({write_error}); the job failed with {message}", file=sys.stderr, flush=True)
    with suppress(OSError):
        run.log(f"failed: {message}")
