"""Background jobs: each one is ``python -m reform_engine <kind> --run-dir D --field value ...`` in its
own OS process and session, so it survives page reloads, uses the cores the app does not, and can be
stopped as a group.

Who writes what. A job process writes only its run directory (status.json, log.txt, metrics.json,
checkpoint/, its outputs; see runs.py); its stdout and stderr go to ``process.log`` there. The store
learns about it through :func:`refresh_job`, which anyone may call at any time (the app does, while it
shows the job): it copies progress from status.json, notices a process that died without saying so
(SIGKILL, out of memory: pid gone, a zombie, or a pid reused by another program) and marks it failed,
keeping its logs, and when the job has ended ingests the variants it decoded once (:func:`ingest_results`).
Checkpoints and evaluation results stay in the run directory, where ``reports.py`` reads them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .runs import RunDir, atomic_write_json, read_json, to_jsonable
from .store import MAX_NOTE, Store, StoreError

REPO_ROOT = Path(__file__).resolve().parent.parent
ACTIVE = ("pending", "running")
NEVER_STARTED_AFTER = 60.0   # seconds a pending job may lack a pid (between add_job and the spawn) before it counts as lost
_children: dict[int, subprocess.Popen] = {}  # processes started here and not yet reaped
_exit_codes: dict[int, int] = {}             # return codes of processes reaped here


def job_kinds() -> dict[str, type]:
    """CLI command -> its config dataclass, for every job command of ``python -m reform_engine``."""
    from .__main__ import _jobs

    return {name: cls for name, (cls, _, _) in _jobs().items()}


def _config_object(kind: str, config: Any):
    kinds = job_kinds()
    if kind not in kinds:
        raise StoreError(f"kind={kind!r} is not a job.", fix=f"use one of {sorted(kinds)}.")
    cls = kinds[kind]
    if isinstance(config, cls):
        return config
    if not isinstance(config, dict):
        raise StoreError(f"config for {kind} is a {type(config).__name__}.", fix=f"pass a {cls.__name__} or a dict of its fields.")
    unknown = sorted(set(config) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise StoreError(f"{cls.__name__} has no field(s) {unknown}.", fix=f"use fields of {cls.__name__}.")
    try:
        return cls(**config)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"invalid {kind} config: {exc}", fix="correct the config; its message says how.") from exc


def command_line(kind: str, config: Any, run_dir: str | os.PathLike) -> list[str]:
    """The argv that runs ``config`` as a separate process; every field is spelt out (None ones keep their default)."""
    args = [sys.executable, "-m", "reform_engine", kind, f"--run-dir={run_dir}"]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is not None:  # '=' form: values that start with '-' stay values
            args.append(f"--{f.name.replace('_', '-')}={str(value).lower() if isinstance(value, bool) else value}")
    return args


# --------------------------------------------------------------------------- processes

def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks) from /proc, or None where there is no /proc entry."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def _reap(pid: int, wait: float = 0.0) -> int | None:
    """Collect the exit of a job process this process started (so it leaves no zombie) -> its return
    code; None while it runs or when another process started it (that one reaps it; here it shows as
    a zombie or as gone). ``wait``: seconds to give a process known to be dying."""
    if pid in _children:
        try:
            code = _children[pid].wait(wait) if wait else _children[pid].poll()
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            _exit_codes[pid] = _children.pop(pid).returncode
    return _exit_codes.get(pid)


def _reap_all() -> None:
    for pid in list(_children):
        _reap(pid)


def process_alive(pid: int | None, proc_start: str | None = None) -> bool:
    """Whether ``pid`` still runs the process started at ``proc_start`` (zombies and reused pids are dead)."""
    if not pid:
        return False
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else: the start time below tells whether it is ours
    stat = _proc_stat(pid)
    if stat is None:
        return not os.path.exists("/proc/self/stat")  # no /proc at all: kill(0) is all we know
    return stat[0] not in ("Z", "X") and (proc_start is None or stat[1] == proc_start)


def stop_process_group(pid: int, proc_start: str | None = None, grace: float = 10.0) -> None:
    """SIGTERM the process group of ``pid`` (a session leader), then SIGKILL it if still alive after ``grace`` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if not process_alive(pid, proc_start):
            return
        try:
            if os.getpgid(pid) == pid:  # a session leader (start_job): the whole group, with its own children
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and process_alive(pid, proc_start):
            time.sleep(0.05)


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "process died"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = " (kill -9 or out of memory)" if -code == signal.SIGKILL else ""
        return f"process died: killed by {name}{hint}"
    return f"process died: exit code {code} without reporting an outcome"


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 4096))
            tail = fh.read().decode("utf-8", "replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(tail)


# --------------------------------------------------------------------------- the job lifecycle

def start_job(store: Store, kind: str, config: Any, run_dir: str | os.PathLike | None = None, *,
              cwd: str | os.PathLike | None = None, rerun_of: int | None = None) -> int:
    """Record a job and start it as its own process -> job id. ``run_dir`` defaults to
    ``<project dir>/runs/<id>-<kind>``; ``cwd`` to the repository root."""
    config = _config_object(kind, config)
    if run_dir is not None:
        run_dir = Path(run_dir).expanduser().resolve()
        busy = store.list_jobs()
        busy = busy[(busy["run_dir"] == str(run_dir)) & busy["state"].isin(ACTIVE)]
        if len(busy):
            raise StoreError(f"job {int(busy['id'].iloc[0])} is still using {run_dir}.", fix="wait for it, cancel it, or pick another run_dir.")
    job_id = store.add_job(kind, to_jsonable(config), None if run_dir is None else str(run_dir))
    run_dir = run_dir or store.path.parent / "runs" / f"{job_id:05d}-{kind}"
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "process.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    try:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(command_line(kind, config, run_dir), cwd=str(cwd or REPO_ROOT), env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        store.update_job(job_id, state="failed", run_dir=str(run_dir), log_path=str(log_path),
                         message=f"could not start the process: {exc}"[:MAX_NOTE])
        raise StoreError(f"could not start job {job_id}: {exc}", fix="check the Python interpreter and the working directory.") from exc
    _exit_codes.pop(proc.pid, None)  # a reused pid: forget the old process's code
    _children[proc.pid] = proc
    stat = _proc_stat(proc.pid)
    store.update_job(job_id, state="running", pid=proc.pid, proc_start=stat[1] if stat else None, run_dir=str(run_dir),
                     log_path=str(log_path), rerun_of=rerun_of, message="started")
    return job_id


def refresh_job(store: Store, job_id: int) -> dict:
    """Bring the job's row up to date with its run directory and process -> the job."""
    _reap_all()
    job = store.get_job(job_id)
    if job["state"] not in ACTIVE:
        if job["exit_code"] is None and job["pid"] and _reap(job["pid"]) is not None:  # exited after reporting success
            job = store.update_job(job_id, exit_code=_reap(job["pid"]))
        if not job["ingested"] and job["run_dir"]:
            return _ingest_quietly(store, job)
        return job
    run_dir = Path(job["run_dir"]) if job["run_dir"] else None
    status = _own_status(run_dir, job["pid"])
    if status.get("state") not in ("succeeded", "failed") and not process_alive(job["pid"], job["proc_start"]):
        age = (datetime.now(UTC).replace(tzinfo=None) - job["created_at"]).total_seconds()
        if job["pid"] is None and age < NEVER_STARTED_AFTER:
            return job  # between add_job and the spawn
        status = _own_status(run_dir, job["pid"])  # it may have finished since the first read
        if status.get("state") not in ("succeeded", "failed"):
            return _mark_dead(store, job, run_dir, status)
    fields = {k: status[k] for k in ("step", "total") if isinstance(status.get(k), int)}
    if isinstance(status.get("progress"), (int, float)):
        fields["progress"] = min(1.0, max(0.0, float(status["progress"])))
    if status.get("message"):
        fields["message"] = str(status["message"])[:MAX_NOTE]
    if status.get("state") in ("succeeded", "failed"):
        fields["state"] = status["state"]
        fields["exit_code"] = _reap(job["pid"]) if job["pid"] else None
        if status.get("state") == "succeeded" and (run_dir / "metrics.json").is_file():
            fields["result_path"] = str(run_dir / "metrics.json")
    fields = {k: v for k, v in fields.items() if job.get(k) != v}  # a look that finds nothing new writes nothing
    job = store.update_job(job_id, **fields) if fields else job
    return _ingest_quietly(store, job) if job["state"] not in ACTIVE else job


def _own_status(run_dir: Path | None, pid: int | None) -> dict:
    """status.json if this job's process wrote it (a re-run in the same directory finds the old run's)."""
    status = (read_json(run_dir / "status.json", {}) or {}) if run_dir else {}
    return status if pid is not None and status.get("pid") == pid else {}


def _mark_dead(store: Store, job: dict, run_dir: Path | None, status: dict) -> dict:
    if job["pid"] is None:
        reason = "process never started"
    else:
        reason = _exit_reason(_reap(job["pid"], wait=5.0))
    last = status.get("message") or (_log_tail(Path(job["log_path"])) if job["log_path"] else "")
    message = f"{reason}; last: {last}" if last else reason
    if run_dir is not None and run_dir.is_dir():  # the run directory tells the same story; logs are kept as they are
        atomic_write_json(run_dir / "status.json", {**status, "state": "failed", "message": message, "updated_at": time.time()})
        RunDir(run_dir).log(f"marked failed: {reason}")
    job = store.update_job(job["id"], state="failed", message=message[:MAX_NOTE], exit_code=_reap(job["pid"]) if job["pid"] else None)
    return _ingest_quietly(store, job)


def cancel_job(store: Store, job_id: int, grace: float = 10.0) -> dict:
    """Stop a running job: SIGTERM to its process group, SIGKILL after ``grace`` seconds; state
    cancelled. A job that has already ended is left as it is. -> the job."""
    job = refresh_job(store, job_id)
    if job["state"] not in ACTIVE:
        return job
    if job["pid"]:
        stop_process_group(job["pid"], job["proc_start"], grace)
    run_dir = Path(job["run_dir"]) if job["run_dir"] else None
    status = _own_status(run_dir, job["pid"])
    if status.get("state") in ("succeeded", "failed"):  # it ended on its own just before the signal
        return refresh_job(store, job_id)
    if run_dir is not None and run_dir.is_dir():
        atomic_write_json(run_dir / "status.json", {**status, "state": "cancelled", "message": "cancelled", "updated_at": time.time()})
        RunDir(run_dir).log("cancelled")
    job = store.update_job(job_id, state="cancelled", message="cancelled", exit_code=_reap(job["pid"]) if job["pid"] else None)
    return _ingest_quietly(store, job)


def rerun_job(store: Store, job_id: int, *, same_run_dir: bool = False) -> int:
    """Start a finished (usually failed or cancelled) job again with the same config -> the new job's id.
    A fresh run directory keeps the old run's logs and checkpoint; ``same_run_dir`` resumes in place
    (a pipeline then reuses its finished stages)."""
    job = refresh_job(store, job_id)
    if job["state"] in ACTIVE:
        raise StoreError(f"job {job_id} is still {job['state']}.", fix="cancel it first, or wait for it to end.")
    return start_job(store, job["kind"], job["config"], job["run_dir"] if same_run_dir else None, rerun_of=job_id)


# --------------------------------------------------------------------------- variants into the store

def _ingest_quietly(store: Store, job: dict) -> dict:
    """Ingest without letting a bad result file break the caller's page: the problem goes in the message."""
    try:
        ingest_results(store, job["id"])
        return store.get_job(job["id"])
    except (StoreError, OSError, json.JSONDecodeError) as exc:
        return store.update_job(job["id"], ingested=True, message=f"{job['message']}; results not ingested: {exc}"[:MAX_NOTE])


def _result_dirs(run_dir: Path) -> list[Path]:
    """The job's run directory and its immediate sub-directories (a pipeline's stages) that succeeded."""
    dirs = [run_dir] + sorted(p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [d for d in dirs if (read_json(d / "status.json", {}) or {}).get("state") == "succeeded"]


def ingest_results(store: Store, job_id: int) -> dict:
    """Copy the variants the job decoded into the store, for curation -> {"variants": ids}.

    Every run directory among the job's own and its immediate sub-directories that succeeded is
    read, and its ``variants.jsonl`` becomes variants. Idempotent: calling it again adds nothing. So a
    failed pipeline still yields the stages it finished."""
    job = store.get_job(job_id)
    if job["state"] in ACTIVE:
        raise StoreError(f"job {job_id} is still {job['state']}.", fix="ingest after it has ended (refresh_job does it).")
    out: dict[str, list[int]] = {"variants": []}
    run_dir = Path(job["run_dir"]) if job["run_dir"] else None
    for d in _result_dirs(run_dir) if run_dir and run_dir.is_dir() else []:
        if (d / "variants.jsonl").is_file():
            with open(d / "variants.jsonl", encoding="utf-8") as fh:
                records = [json.loads(line) for line in fh if line.strip()]
            out["variants"] += store.add_variants(records, job_id)
    store.update_job(job_id, ingested=True)
    return out
