"""Background jobs: each one is ``python -m reform_engine <kind> --run-dir D --field value ...`` in its
own OS process and session, so it survives page reloads, uses the cores the app does not, and can be
stopped as a group.

Who writes what. A job process writes its run directory (status.json, log.txt, metrics.json,
checkpoint/, its outputs; see runs.py), and the store only as it ends (:func:`hand_off`); its stdout
and stderr go to ``process.log`` there. The store
learns about it through :func:`refresh_job`, which anyone may call at any time (the app does, while it
shows the job): it copies progress from status.json, notices a process that died without saying so
(SIGKILL, out of memory: pid gone, a zombie, or a pid reused by another program) and marks it failed,
keeping its logs, and when the job has ended ingests the variants it decoded once (:func:`ingest_results`).
Checkpoints and evaluation results stay in the run directory, where ``reports.py`` reads them.

The queue. Two torch processes on the same cores each slow down many times over (a training step of
4 s took 30-55 s beside a second model process on 2 cores), so at most :func:`max_jobs` jobs run at
once and :func:`start_job` only queues a job: it records it ``queued`` and :func:`launch_queued`
starts the oldest waiting ones while slots are free. Slots are claimed in one store transaction, so
the schedulers below never over-fill them. The scheduler runs (1) in the job's own process as it
ends (:func:`hand_off`, called by ``python -m reform_engine``), so the queue moves with no page open;
(2) in :func:`refresh_job` whenever it sees a job end or looks at a queued one, and after a cancel,
which covers a job killed outright (SIGKILL, out of memory) as soon as anyone looks; and (3) in
``python -m reform_engine queue``, for a machine with no app. The app's own model work takes the
cores the running jobs leave (:func:`cap_app_threads`).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .configs import JobConfigError, config_argv, config_from_dict
from .registry import jobs
from .runs import ACTIVE_STATES, atomic_write_json, read_json, recover_directory, to_jsonable
from .store import MAX_NOTE, Store, StoreError

REPO_ROOT = Path(__file__).resolve().parent.parent
ACTIVE = ACTIVE_STATES       # queued, pending (claimed, being spawned), running: the job has not ended
SLOT_STATES = ("pending", "running")
NEVER_STARTED_AFTER = 60.0   # seconds a pending job may lack a pid (between its claim and the spawn) before it counts as lost
CORES_PER_JOB = 4            # default slots: one job per 4 cores, at least one (a job uses every core it is given)
MAX_JOBS_ENV = "REFORM_MAX_JOBS"
STORE_ENV, JOB_ID_ENV = "REFORM_JOB_STORE", "REFORM_JOB_ID"   # tell a job process where to hand off as it ends
MEASURING_KINDS = ("compare",)  # jobs whose decoding and attacks only measure: their variants are not for Curation
_children: dict[int, subprocess.Popen] = {}  # processes started here and not yet reaped
_exit_codes: dict[int, int] = {}             # return codes of processes reaped here


def job_kinds() -> dict[str, type]:
    """Job name -> its config dataclass, for every job of ``python -m reform_engine`` (registry.py)."""
    return {name: job.config for name, job in jobs().items()}


def _config_object(kind: str, config: Any):
    """``config`` (a config object, or its JSON as a dict) as the config object of job ``kind``."""
    kinds = job_kinds()
    if kind not in kinds:
        raise JobConfigError(f"kind={kind!r} is not a job.", fix=f"use one of {sorted(kinds)}.")
    cls = kinds[kind]
    if isinstance(config, cls):
        return config
    if not isinstance(config, dict):
        raise JobConfigError(f"config for {kind} is a {type(config).__name__}.", fix=f"pass a {cls.__name__} or a dict of its fields.")
    try:
        return config_from_dict(cls, config)
    except JobConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise JobConfigError(f"invalid {kind} config: {exc}", fix="correct the config; its message says how.") from exc


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def max_jobs(env: dict | None = None) -> int:
    """How many jobs may run at once: ``$REFORM_MAX_JOBS``, else one per CORES_PER_JOB cores, at least 1."""
    env = os.environ if env is None else env
    raw = env.get(MAX_JOBS_ENV, "").strip()
    if not raw:
        return max(1, cpu_cores() // CORES_PER_JOB)
    if not raw.isdigit() or int(raw) < 1:
        raise StoreError(f"{MAX_JOBS_ENV}={raw!r} is not a whole number >= 1.",
                         fix=f"unset it (one job per {CORES_PER_JOB} cores) or set e.g. 1.")
    return int(raw)


def job_threads(cores: int, limit: int) -> int:
    """Torch threads of each job when ``limit`` may run at once: an equal share of the cores."""
    return max(1, cores // limit)


def app_threads(running: int, *, cores: int, limit: int, full: int) -> int:
    """Torch threads for the app's own model work while ``running`` jobs run: the cores they leave, at
    least 1 and at most ``full`` (the app's own default). With no job, ``full``."""
    if running <= 0:
        return full
    return max(1, min(full, cores - running * job_threads(cores, limit)))


def running_jobs(store: Store) -> int:
    """Jobs of ``store`` whose process runs now, or is being started: what competes for the cores. A
    row still marked running whose process died unseen does not count (no page has looked yet)."""
    jobs = store.list_jobs()
    busy = jobs[jobs["state"].isin(SLOT_STATES)].astype(object).where(lambda f: f.notna(), None)
    return sum(1 for pid, start in zip(busy["pid"], busy["proc_start"]) if pid is None or process_alive(int(pid), start))


def cap_app_threads(store: Store, full: int) -> int:
    """Set the torch threads of the calling thread for in-process model work (scoring, decoding,
    traces) from the jobs running now -> that number. Call it in the thread that does the work:
    with OpenMP each thread keeps its own count, so a cap set elsewhere would not reach it."""
    from .runtime import set_cpu_threads

    n = app_threads(running_jobs(store), cores=cpu_cores(), limit=max_jobs(), full=full)
    set_cpu_threads(n)
    return n


def command_line(kind: str, config: Any, run_dir: str | os.PathLike) -> list[str]:
    """The argv that runs ``config`` as a separate process; every flag is spelt out (configs.config_argv)."""
    return [sys.executable, "-m", "reform_engine", kind, f"--run-dir={run_dir}", *config_argv(config)]


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
              rerun_of: int | None = None) -> int:
    """Queue a job and start it at once if a slot is free (:func:`launch_queued`) -> job id. Its
    process runs in the repository root; ``run_dir`` defaults to ``<project dir>/runs/<id>-<kind>``.
    An unknown kind or a bad config is refused with a JobConfigError, a ``run_dir`` an unfinished job
    owns (running or queued) with a StoreError."""
    config = _config_object(kind, config)
    max_jobs()  # a bad REFORM_MAX_JOBS is refused here, before anything is recorded
    if run_dir is not None:
        run_dir = Path(run_dir).expanduser().resolve()
        owners = store.list_jobs()
        for owner in owners[(owners["run_dir"] == str(run_dir)) & owners["state"].isin(SLOT_STATES)]["id"]:
            _refresh(store, int(owner))  # a job that died unseen no longer owns the directory
    job_id = store.add_job(kind, to_jsonable(config), None if run_dir is None else str(run_dir), state="queued")
    try:
        store.update_job(job_id, message="queued", rerun_of=rerun_of,
                         run_dir=str(run_dir or _default_run_dir(store, job_id, kind)))
    except StoreError:
        store.update_job(job_id, state="cancelled", message="not started: its record could not be completed")
        raise
    launch_queued(store)
    job = store.get_job(job_id)
    if job["state"] == "failed":
        raise StoreError(f"could not start job {job_id}: {job['message']}", fix="check the Python interpreter and the run directory.")
    return job_id


def _default_run_dir(store: Store, job_id: int, kind: str) -> Path:
    return store.path.parent / "runs" / f"{job_id:05d}-{kind}"


def launch_queued(store: Store) -> list[int]:
    """Start queued jobs, oldest first, while fewer than :func:`max_jobs` run -> the ids started.
    Running jobs are looked at first, so one that ended unseen frees its slot."""
    _reap_all()
    jobs = store.list_jobs()
    for job_id in sorted(jobs[jobs["state"].isin(SLOT_STATES)]["id"]):
        _refresh(store, int(job_id))
    limit, started = max_jobs(), []
    while (job := store.claim_queued_job(limit)) is not None:
        if _spawn(store, job):
            started.append(job["id"])
    return started


def _spawn(store: Store, job: dict) -> bool:
    """Start a claimed job's process (its own session, output in ``process.log``) -> whether it started."""
    run_dir = Path(job["run_dir"]) if job["run_dir"] else _default_run_dir(store, job["id"], job["kind"])
    log_path = run_dir / "process.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", STORE_ENV: str(store.path), JOB_ID_ENV: str(job["id"]),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    limit = max_jobs()
    if limit > 1:  # jobs side by side share the cores instead of each taking all of them
        env.setdefault("OMP_NUM_THREADS", str(job_threads(cpu_cores(), limit)))
    try:
        argv = command_line(job["kind"], _config_object(job["kind"], job["config"]), run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, cwd=str(REPO_ROOT), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
    except (OSError, StoreError, JobConfigError) as exc:
        store.update_job(job["id"], state="failed", run_dir=str(run_dir), log_path=str(log_path),
                         message=f"could not start the process: {exc}"[:MAX_NOTE])
        return False
    _exit_codes.pop(proc.pid, None)  # a reused pid: forget the old process's code
    _children[proc.pid] = proc
    stat = _proc_stat(proc.pid)
    store.update_job(job["id"], state="running", pid=proc.pid, proc_start=stat[1] if stat else None, run_dir=str(run_dir),
                     log_path=str(log_path), message="started")
    return True


def queue_position(store: Store, job_id: int) -> int | None:
    """1 for the next job to start, 2 for the one after it, ...; None when the job is not queued."""
    jobs = store.list_jobs()
    queued = sorted(int(i) for i in jobs[jobs["state"] == "queued"]["id"])
    return queued.index(job_id) + 1 if job_id in queued else None


def hand_off(error: BaseException | None = None) -> None:
    """Run by a job's own process as it ends (``python -m reform_engine``): record how it ended and
    start the next queued job, so the queue moves with no page open. ``error``: the exception that
    ended it, told to the store directly when status.json could not say it (a full disk). Only a
    process started by :func:`start_job` does anything (its session leader: workers it spawned inherit
    the environment); never raises, since the job's own outcome is what counts."""
    store_path, job_id = os.environ.get(STORE_ENV), os.environ.get(JOB_ID_ENV, "")
    if not store_path or not job_id.isdigit() or os.getsid(0) != os.getpid():
        return
    try:
        store, job_id = Store(store_path), int(job_id)
        deadline = time.monotonic() + 10.0
        while store.get_job(job_id)["pid"] != os.getpid():  # the launcher records the pid just after the spawn
            if time.monotonic() > deadline:
                return  # whoever looks next (refresh_job) hands the slot on
            time.sleep(0.1)
        job = refresh_job(store, job_id)
        if job["state"] in ACTIVE:
            message = f"{type(error).__name__}: {error}" if error is not None else "ended without reporting an outcome"
            store.update_job(job_id, state="failed", message=message[:MAX_NOTE])
            launch_queued(store)
    except Exception as exc:  # noqa: BLE001 - the job has ended either way; say why the hand-off did not happen
        with contextlib.suppress(OSError):
            print(f"could not hand the job slot on: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def refresh_job(store: Store, job_id: int) -> dict:
    """Bring the job's row up to date with its run directory and process -> the job. When it finds the
    job ended, or queued, it starts what the free slots allow (:func:`launch_queued`). Never raises
    for a run directory it cannot read or write (a full disk): that goes in the job's message."""
    job, ended = _refresh(store, job_id)
    if job["state"] == "queued" or ended:
        launch_queued(store)
        return store.get_job(job_id)
    return job


def _refresh(store: Store, job_id: int) -> tuple[dict, bool]:
    """refresh_job without starting anything -> (the job, whether this look saw it end)."""
    _reap_all()
    job = store.get_job(job_id)
    if job["state"] == "queued":
        return job, False
    if job["state"] not in ACTIVE:
        if job["exit_code"] is None and job["pid"] and _reap(job["pid"]) is not None:  # exited after reporting success
            job = store.update_job(job_id, exit_code=_reap(job["pid"]))
        if not job["ingested"] and job["run_dir"]:
            return _ingest_quietly(store, job), False
        return job, False
    run_dir = Path(job["run_dir"]) if job["run_dir"] else None
    status = _own_status(run_dir, job["pid"])
    if status.get("state") not in ("succeeded", "failed") and not process_alive(job["pid"], job["proc_start"]):
        age = (datetime.now(UTC).replace(tzinfo=None) - job["updated_at"]).total_seconds()
        if job["pid"] is None and age < NEVER_STARTED_AFTER:
            return job, False  # claimed, being spawned
        status = _own_status(run_dir, job["pid"])  # it may have finished since the first read
        if status.get("state") not in ("succeeded", "failed"):
            return _mark_dead(store, job, run_dir, status), True
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
    if job["state"] in ACTIVE:
        return job, False
    return _ingest_quietly(store, job), True


def _own_status(run_dir: Path | None, pid: int | None) -> dict:
    """status.json if this job's process wrote it (a re-run in the same directory finds the old run's);
    {} when it cannot be read (a failing disk, a file caught half-written by a full-disk fallback)."""
    try:
        status = (read_json(run_dir / "status.json", {}) or {}) if run_dir else {}
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) and pid is not None and status.get("pid") == pid else {}


def _note_in_run_dir(run_dir: Path | None, status: dict, line: str) -> str:
    """Write the store's verdict into the run directory too (status.json and log.txt; logs are kept as
    they are) -> "" or why it could not be written (then the store alone has it)."""
    if run_dir is None or not run_dir.is_dir():
        return ""
    try:
        atomic_write_json(run_dir / "status.json", {**status, "updated_at": time.time()})
        with open(run_dir / "log.txt", "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
    except OSError as exc:
        return f"; run directory not updated: {exc}"
    return ""


def _mark_dead(store: Store, job: dict, run_dir: Path | None, status: dict) -> dict:
    if job["pid"] is None:
        reason = "process never started"
    else:
        reason = _exit_reason(_reap(job["pid"], wait=5.0))
    last = status.get("message") or (_log_tail(Path(job["log_path"])) if job["log_path"] else "")
    message = f"{reason}; last: {last}" if last else reason
    if run_dir is not None:
        recover_directory(run_dir / "checkpoint")  # killed between the two renames of a checkpoint save
    message += _note_in_run_dir(run_dir, {**status, "state": "failed", "message": message}, f"marked failed: {reason}")
    job = store.update_job(job["id"], state="failed", message=message[:MAX_NOTE], exit_code=_reap(job["pid"]) if job["pid"] else None)
    return _ingest_quietly(store, job)


def cancel_job(store: Store, job_id: int, grace: float = 10.0) -> dict:
    """Stop a job: a queued one leaves the queue; a running one gets SIGTERM to its process group,
    SIGKILL after ``grace`` seconds; state cancelled, and its slot goes to the next queued job. A job
    that has already ended is left as it is. -> the job."""
    job = _refresh(store, job_id)[0]
    if job["state"] == "queued":
        if store.cancel_queued_job(job_id):
            return store.get_job(job_id)
        job = _refresh(store, job_id)[0]  # a scheduler claimed it in the meantime: stop it as a started job
    if job["state"] not in ACTIVE:
        return job
    if job["pid"]:
        stop_process_group(job["pid"], job["proc_start"], grace)
    run_dir = Path(job["run_dir"]) if job["run_dir"] else None
    status = _own_status(run_dir, job["pid"])
    if status.get("state") in ("succeeded", "failed"):  # it ended on its own just before the signal
        return refresh_job(store, job_id)
    note = _note_in_run_dir(run_dir, {**status, "state": "cancelled", "message": "cancelled"}, "cancelled")
    job = store.update_job(job_id, state="cancelled", message=f"cancelled{note}"[:MAX_NOTE],
                           exit_code=_reap(job["pid"]) if job["pid"] else None)
    job = _ingest_quietly(store, job)
    launch_queued(store)
    return job


def rerun_job(store: Store, job_id: int, *, same_run_dir: bool = False) -> int:
    """Start a finished (usually failed or cancelled) job again with the same config -> the new job's id.
    A fresh run directory keeps the old run's logs and checkpoint; ``same_run_dir`` resumes in place:
    a pipeline, adv-rounds or crossval reuses its finished stages, variant decoding its finished batches
    (resume.Journal), training and an attack their last saved step (resume.Snapshot). What the earlier
    job already sent to Curation is not sent again."""
    job = refresh_job(store, job_id)
    if job["state"] in ACTIVE:
        raise StoreError(f"job {job_id} is still {job['state']}.", fix="cancel it first, or wait for it to end.")
    return start_job(store, job["kind"], job["config"], job["run_dir"] if same_run_dir else None, rerun_of=job_id)


ADOPTED_NOTE = "added from a run made outside the app"


def run_kinds(run_dir: str | os.PathLike) -> list[str]:
    """The jobs whose config the run directory's ``config.json`` is (usually one), for adding a run made
    with the command line or a benchmark script; [] when it holds no config of any job."""
    config = read_json(Path(run_dir).expanduser() / "config.json")
    if not isinstance(config, dict):
        return []
    kinds = []
    for kind, cls in job_kinds().items():
        try:
            config_from_dict(cls, config)
        except (JobConfigError, TypeError, ValueError):
            continue
        kinds.append(kind)
    return kinds


def adopt_run(store: Store, run_dir: str | os.PathLike, kind: str | None = None) -> int:
    """Add a run made outside the app (``python -m reform_engine <kind> --run-dir D``, a benchmark script, another
    machine's run copied here) to the project as a finished job -> its id. ``kind``: the job it ran (None: the
    one job whose config its config.json is, :func:`run_kinds`). Its results then show on the pages like any
    job's, and Re-run and Resume work on it. Its variants are not sent to Curation. Refused, saying what to
    fix: no such directory, no config of a job in it (or of ``kind``), a run that has not ended (it may still
    be running: add it when it ends), or one the project already has."""
    path = Path(run_dir).expanduser().resolve()
    if not path.is_dir():
        raise StoreError(f"{path} is not a directory.", fix="give the run directory of a job (the one passed as --run-dir).")
    config = read_json(path / "config.json")
    if not isinstance(config, dict):
        raise StoreError(f"{path} has no readable config.json, so it is no run directory of a job.",
                         fix="give the directory passed as --run-dir, which holds config.json and status.json.")
    if kind is None:
        kinds = run_kinds(path)
        if len(kinds) != 1:
            raise StoreError(f"the config.json in {path} is " + (f"the config of several jobs ({', '.join(kinds)})" if kinds
                                                                else "no job's config (written by another version?)"),
                             fix="say which job made it" if kinds else "give the run directory of a job of this version")
        kind = kinds[0]
    config = to_jsonable(_config_object(kind, config))  # JobConfigError when it is another job's config
    status = read_json(path / "status.json", {}) or {}
    state = status.get("state")
    if state not in ("succeeded", "failed", "cancelled"):
        raise StoreError(f"{path} is a run that has not ended (state {state or 'unknown'!r}); it may still be running.",
                         fix="add it when it has ended; a killed run can be resumed with its own command, or added and "
                             "then resumed here.")
    owned = [j for j in store.list_jobs().to_dict("records")
             if j["run_dir"] and Path(j["run_dir"]).expanduser().resolve() == path]
    if owned:
        raise StoreError(f"the project already has {path} as job #{owned[0]['id']} ({owned[0]['kind']}).",
                         fix="pick that job in the run history.")
    job_id = store.add_job(kind, config, str(path))
    started = datetime.fromtimestamp((path / "config.json").stat().st_mtime, UTC).replace(tzinfo=None)
    ended = datetime.fromtimestamp((path / "status.json").stat().st_mtime, UTC).replace(tzinfo=None)
    message = f"{status.get('message', '')} ({ADOPTED_NOTE})".strip()
    return store.update_job(job_id, state=state, progress=float(status.get("progress") or 0.0), message=message[:MAX_NOTE],
                            ingested=True, started_at=started, finished_at=max(started, ended))["id"]


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
    run_dir = Path(job["run_dir"]) if job["run_dir"] and job["kind"] not in MEASURING_KINDS else None
    for d in _result_dirs(run_dir) if run_dir and run_dir.is_dir() else []:
        if (d / "variants.jsonl").is_file():
            with open(d / "variants.jsonl", encoding="utf-8") as fh:
                records = [json.loads(line) for line in fh if line.strip()]
            out["variants"] += store.add_variants(records, job_id, resumed=_resumed(store, job))
    store.update_job(job_id, ingested=True)
    return out


def _resumed(store: Store, job: dict) -> list[int]:
    """The earlier jobs that ``job`` resumed in the same run directory (rerun_job(same_run_dir=True)), newest first."""
    out, seen = [], {job["id"]}
    while job.get("rerun_of") is not None and job["rerun_of"] not in seen:
        earlier = store.get_job(job["rerun_of"])
        if earlier["run_dir"] != job["run_dir"]:
            break
        out.append(earlier["id"])
        seen.add(earlier["id"])
        job = earlier
    return out
