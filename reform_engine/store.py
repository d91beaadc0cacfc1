"""The project database: checkpoints, jobs, variants with their decoding records, human
decisions and evaluation results in one DuckDB file. All SQL of the workbench lives here, with user
values always passed as parameters.

Concurrency. DuckDB lets one process at a time hold a file open, and whoever holds it locks everyone
else out. So nobody holds it: every call opens a connection, runs one transaction and closes it again
(tens of milliseconds), and calls from all threads and processes take turns through an advisory lock
(``flock``) on ``<db>.lock``, waited for with backoff up to ``timeout`` seconds. The kernel drops that
lock when its holder dies, even by SIGKILL, and DuckDB's write-ahead log discards a transaction cut
short, so a killed writer costs nothing but its own unfinished write. A program holding the file
outside this module (a duckdb shell) is waited out by retrying the open. A caller only ever sees a
:class:`StoreError` ("busy for 60 s, close the other program"), never DuckDB's lock error.

Job processes do not write here: they write their run directory (see runs.py) and
``jobs.refresh_job``, called by the app, copies progress and results in.

Schema. ``schema_version`` holds the version; ``MIGRATIONS[i]`` takes a database from version i to
i + 1, each in one transaction, on first use of a ``Store``. JSON (configs, metrics, prompts, decoding
steps) is stored as text and parsed on the way out.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from .data import DataError, PreferencePair, added_pair, load_preferences, write_jsonl
from .runs import STATES, to_jsonable

try:
    import fcntl
except ImportError:  # not POSIX: threads still take turns; other processes are waited out by open retries
    fcntl = None

MAX_TEXT = 50_000          # characters in a response or an edited text: far above real responses
MAX_NOTE = 5_000           # characters in a note or a job message
MAX_NAME = 1_000           # characters in a name, label, kind or path
MAX_JSON = 20_000_000      # characters of one JSON value (a config, metrics, a variant's decoding steps)
DECISIONS = ("approve", "reject", "edit")          # edit = approve with the variant's text replaced
STATUSES = ("pending", "approved", "rejected")     # what a variant's latest decision makes it
DIRECTIONS = ("lower", "raise", "adv-rm")          # decoding.DIRECTIONS + an Adv-RM attack sample; "imported" marks import_trl rows
JOB_FIELDS = {"state", "progress", "step", "total", "message", "pid", "proc_start", "exit_code", "run_dir",
              "log_path", "result_path", "rerun_of", "ingested", "started_at", "finished_at"}

MIGRATIONS: list[list[str]] = [
    [  # 1: the first schema
        "CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL)",
        "CREATE SEQUENCE datasets_id",
        """CREATE TABLE datasets (id INTEGER PRIMARY KEY DEFAULT nextval('datasets_id'), name VARCHAR NOT NULL,
           source VARCHAR NOT NULL, n_pairs INTEGER NOT NULL, created_at TIMESTAMP NOT NULL)""",
        "CREATE SEQUENCE checkpoints_id",
        """CREATE TABLE checkpoints (id INTEGER PRIMARY KEY DEFAULT nextval('checkpoints_id'), path VARCHAR NOT NULL UNIQUE,
           label VARCHAR NOT NULL, base_model VARCHAR NOT NULL, job_id INTEGER, metrics VARCHAR,
           created_at TIMESTAMP NOT NULL)""",
        "CREATE SEQUENCE jobs_id",
        """CREATE TABLE jobs (id INTEGER PRIMARY KEY DEFAULT nextval('jobs_id'), kind VARCHAR NOT NULL,
           config VARCHAR NOT NULL, state VARCHAR NOT NULL, progress DOUBLE NOT NULL DEFAULT 0, step INTEGER,
           total INTEGER, message VARCHAR NOT NULL DEFAULT '', pid INTEGER, proc_start VARCHAR, exit_code INTEGER,
           run_dir VARCHAR, log_path VARCHAR, result_path VARCHAR, rerun_of INTEGER,
           ingested BOOLEAN NOT NULL DEFAULT FALSE, created_at TIMESTAMP NOT NULL, started_at TIMESTAMP,
           updated_at TIMESTAMP NOT NULL, finished_at TIMESTAMP)""",
        "CREATE SEQUENCE variants_id",
        """CREATE TABLE variants (id INTEGER PRIMARY KEY DEFAULT nextval('variants_id'), key VARCHAR NOT NULL UNIQUE,
           job_id INTEGER, pair_id VARCHAR NOT NULL, direction VARCHAR NOT NULL, prompt VARCHAR NOT NULL,
           original_chosen VARCHAR NOT NULL, original_rejected VARCHAR NOT NULL, text VARCHAR NOT NULL,
           r_variant DOUBLE, r_trace DOUBLE, r_chosen DOUBLE, r_rejected DOUBLE, margin DOUBLE, perplexity DOUBLE,
           is_inversion BOOLEAN NOT NULL, steps VARCHAR NOT NULL, trace VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL)""",
        "CREATE SEQUENCE decisions_id",
        """CREATE TABLE decisions (id INTEGER PRIMARY KEY DEFAULT nextval('decisions_id'), variant_id INTEGER NOT NULL,
           decision VARCHAR NOT NULL CHECK (decision IN ('approve', 'reject', 'edit')), edited_text VARCHAR,
           note VARCHAR NOT NULL, decided_at TIMESTAMP NOT NULL)""",
        "CREATE SEQUENCE eval_results_id",
        """CREATE TABLE eval_results (id INTEGER PRIMARY KEY DEFAULT nextval('eval_results_id'), label VARCHAR NOT NULL,
           job_id INTEGER, metrics VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL)""",
    ],
    [  # 2: no datasets table: nothing but tests ever wrote to it (the app reads data files, not this table)
        "DROP TABLE IF EXISTS datasets",
        "DROP SEQUENCE IF EXISTS datasets_id",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

# the latest decision of each variant, and the status it gives the variant
_VARIANT_STATUS = """
    SELECT v.*, d.decision, d.edited_text, d.note, d.decided_at,
           CASE WHEN d.decision IS NULL THEN 'pending' WHEN d.decision = 'reject' THEN 'rejected' ELSE 'approved' END AS status
    FROM variants v LEFT JOIN (
        SELECT *, row_number() OVER (PARTITION BY variant_id ORDER BY id DESC) AS latest FROM decisions
    ) d ON d.variant_id = v.id AND d.latest = 1"""
_VARIANT_LIST_COLUMNS = ("id, job_id, pair_id, direction, prompt, original_chosen, original_rejected, text, r_variant, "
                         "r_trace, r_chosen, r_rejected, margin, perplexity, is_inversion, status, decision, edited_text, "
                         "note, decided_at")


class StoreError(ValueError):
    """A bad request to the store (unknown id, oversized text, invalid value): says what to do instead."""

    def __init__(self, message: str, fix: str = ""):
        self.message, self.fix = message, fix
        super().__init__(message + (f" Fix: {fix}" if fix else ""))


def default_store_path() -> Path:
    """``$REFORM_PROJECT_DIR/reform.duckdb``, or ``./project_data/reform.duckdb``."""
    return Path(os.environ.get("REFORM_PROJECT_DIR") or "project_data") / "reform.duckdb"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # stored as UTC


# --------------------------------------------------------------------------- input checks (before any write)

def _text(value: Any, what: str, limit: int = MAX_TEXT, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise StoreError(f"{what} must be text, got {type(value).__name__}.", fix=f"pass {what} as a string.")
    if len(value) > limit:
        raise StoreError(f"{what} is {len(value):,} characters long, over the limit of {limit:,}.",
                         fix=f"shorten it to at most {limit:,} characters.")
    if not empty and not value.strip():
        raise StoreError(f"{what} is empty.", fix=f"give a non-empty {what}.")
    return value


def _int(value: Any, what: str, *, minimum: int = 0, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StoreError(f"{what}={value!r} is not an integer >= {minimum}.", fix=f"pass {what} as an integer >= {minimum}.")
    return value


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StoreError(f"{what}={value!r} is not a number.", fix=f"pass {what} as a float (NaN or None when unknown).")
    return float(value)


def _json(value: Any, what: str) -> str:
    try:
        text = json.dumps(to_jsonable(value), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} cannot be stored as JSON ({exc}).", fix="pass plain dicts, lists, strings and numbers.") from exc
    if len(text) > MAX_JSON:
        raise StoreError(f"{what} is {len(text):,} characters as JSON, over the limit of {MAX_JSON:,}.",
                         fix="store large artefacts as files in the run directory and keep their path here.")
    return text


def _messages(value: Any, what: str) -> list[dict[str, str]]:
    ok = isinstance(value, (list, tuple)) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise StoreError(f"{what} must be a non-empty list of {{'role', 'content'}} messages.",
                         fix="pass the prompt as PreferencePair.prompt or Variant.to_record()['prompt'].")
    msgs = [{"role": m["role"], "content": m["content"]} for m in value]
    _text(json.dumps(msgs), what, MAX_TEXT * 4)
    return msgs


def _variant_row(rec: Any, job_id: int | None, i: int) -> dict[str, Any]:
    """Check one Variant.to_record() dict -> the columns of its variants row."""
    if not isinstance(rec, dict):
        raise StoreError(f"variant record {i} is a {type(rec).__name__}, not a dict.", fix="pass Variant.to_record() dicts.")
    missing = [k for k in ("pair_id", "direction", "prompt", "original_chosen", "original_rejected", "text",
                           "is_inversion") if k not in rec]
    if missing:
        raise StoreError(f"variant record {i} lacks {missing}.", fix="pass Variant.to_record() dicts (variants.jsonl rows).")
    direction = rec["direction"]
    if direction not in DIRECTIONS:
        raise StoreError(f"variant record {i} has direction={direction!r}.", fix=f"use one of {DIRECTIONS}.")
    text = _text(rec["text"], f"text of variant record {i}", empty=True)
    if not isinstance(rec["is_inversion"], bool):
        raise StoreError(f"is_inversion of variant record {i} is {rec['is_inversion']!r}.", fix="pass True or False.")
    if rec["is_inversion"] and not text.strip():
        raise StoreError(f"variant record {i} is marked an inversion but its text is empty.", fix="mark it is_inversion=False.")
    steps = rec.get("steps") or []
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise StoreError(f"steps of variant record {i} must be a list of step dicts.", fix="pass decoding.StepRecord dicts.")
    row = {"job_id": job_id, "pair_id": _text(rec["pair_id"], f"pair_id of variant record {i}", MAX_NAME),
           "direction": direction, "prompt": _json(_messages(rec["prompt"], f"prompt of variant record {i}"), "prompt"),
           "original_chosen": _text(rec["original_chosen"], f"original_chosen of variant record {i}"),
           "original_rejected": _text(rec["original_rejected"], f"original_rejected of variant record {i}"),
           "text": text, "is_inversion": rec["is_inversion"], "steps": _json(steps, f"steps of variant record {i}"),
           "trace": _json([s.get("running_reward") for s in steps], "reward trace")}
    for k in ("r_variant", "r_trace", "r_chosen", "r_rejected", "margin", "perplexity"):
        row[k] = _number(rec.get(k), f"{k} of variant record {i}")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    row["key"] = f"job{job_id}:{row['pair_id']}:{direction}:{digest}"  # one variant once per job: ingestion is idempotent
    return row


# --------------------------------------------------------------------------- taking turns on the file

_held = threading.local()
_thread_turn = threading.Lock()  # used only where flock is missing


@contextmanager
def _turn(lock_path: Path, deadline: float, db: Path) -> Iterator[None]:
    """Exclusive use of the database among all threads and processes using this module."""
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
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)  # a fresh open file: flock then also separates threads
    try:
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise _busy(db) from None
                time.sleep(delay * random.uniform(0.5, 1.0))  # jitter: waiters do not wake in lockstep
                delay = min(delay * 2, 0.05)
        _held.busy = True
        yield
    finally:
        _held.busy = False
        os.close(fd)  # releases the flock


def _busy(db: Path) -> StoreError:
    return StoreError(f"the project database {db} stayed busy past the timeout.",
                      fix="close other programs that have it open (e.g. a duckdb shell), or pass a longer timeout.")


def _rows(cur) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def _parse(row: dict[str, Any] | None, *cols: str) -> dict[str, Any] | None:
    if row is not None:
        for c in cols:
            row[c] = json.loads(row[c]) if row.get(c) is not None else None
    return row


def _frame(cur, *json_cols: str):
    df = cur.df()
    for c in json_cols:
        df[c] = [json.loads(x) if isinstance(x, str) else None for x in df[c]]
    return df


class Store:
    """The project's DuckDB database. Every method is one short transaction; safe from any number of
    threads and processes at once. An instance holds no connection, so one can be shared freely (e.g.
    through ``st.cache_resource``). Methods return plain dicts, lists or pandas DataFrames (newest job
    first, everything else by id) and raise :class:`StoreError` on bad input, having changed nothing."""

    def __init__(self, path: str | os.PathLike | None = None, *, timeout: float = 60.0):
        self.path = Path(path or default_store_path()).expanduser().resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        with self._tx() as con:
            self._migrate(con)

    def _open(self, deadline: float) -> duckdb.DuckDBPyConnection:
        delay = 0.01
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() > deadline:
                    raise _busy(self.path) from None
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 0.5)

    @contextmanager
    def _tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.timeout
        with _turn(self._lock_path, deadline, self.path):
            con = self._open(deadline)
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                except BaseException:
                    try:
                        con.execute("ROLLBACK")
                    except duckdb.Error:
                        pass  # the transaction is already gone; the original error is the one to see
                    raise
                con.execute("COMMIT")
            finally:
                con.close()

    def _migrate(self, con) -> None:
        exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'").fetchone()[0]
        version = (con.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0) if exists else 0
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}; this code knows up to {SCHEMA_VERSION}.",
                             fix="update the workbench, or point REFORM_PROJECT_DIR at another project.")
        for v in range(version, SCHEMA_VERSION):
            for sql in MIGRATIONS[v]:
                con.execute(sql)
            con.execute("INSERT INTO schema_version VALUES (?, ?)", [v + 1, _now()])

    @staticmethod
    def _require(con, table: str, row_id: Any, what: str) -> dict[str, Any]:
        _int(row_id, f"{what} id", minimum=1)
        rows = _rows(con.execute(f"SELECT * FROM {table} WHERE id = ?", [row_id]))  # table: a constant of this module
        if not rows:
            raise StoreError(f"there is no {what} with id {row_id}.", fix=f"pick an id from list_{table}().")
        return rows[0]

    # ----------------------------------------------------------------------- checkpoints
    def add_checkpoint(self, path: str, label: str, base_model: str, job_id: int | None = None,
                       metrics: dict | None = None) -> int:
        """Register a checkpoint directory (or model id); the same path again returns its existing id."""
        path = _text(str(path), "path", MAX_NAME)
        if Path(path).expanduser().exists():
            path = str(Path(path).expanduser().resolve())
        params = [path, _text(label, "label", MAX_NAME), _text(base_model, "base_model", MAX_NAME),
                  _int(job_id, "job_id", minimum=1, optional=True), None if metrics is None else _json(metrics, "metrics"), _now()]
        with self._tx() as con:
            if job_id is not None:
                self._require(con, "jobs", job_id, "job")
            found = con.execute("SELECT id FROM checkpoints WHERE path = ?", [path]).fetchone()
            if found:
                return found[0]
            return con.execute("INSERT INTO checkpoints (path, label, base_model, job_id, metrics, created_at) "
                               "VALUES (?, ?, ?, ?, ?, ?) RETURNING id", params).fetchone()[0]

    def list_checkpoints(self):
        with self._tx() as con:
            return _frame(con.execute("SELECT * FROM checkpoints ORDER BY id"), "metrics")

    # ----------------------------------------------------------------------- jobs
    def add_job(self, kind: str, config: dict, run_dir: str | None = None) -> int:
        if not isinstance(kind, str) or not re.fullmatch(r"[a-z][a-z0-9-]{0,63}", kind):
            raise StoreError(f"kind={kind!r} is not a job name.", fix="use a CLI command name such as 'train-rm'.")
        if not isinstance(config, dict):
            raise StoreError(f"config is a {type(config).__name__}.", fix="pass the job config as a dict (dataclasses.asdict).")
        params = [kind, _json(config, "config"), None if run_dir is None else _text(str(run_dir), "run_dir", MAX_NAME), _now()]
        with self._tx() as con:
            return con.execute("INSERT INTO jobs (kind, config, state, run_dir, created_at, updated_at) "
                               "VALUES (?, ?, 'pending', ?, ?, ?) RETURNING id", params + [params[-1]]).fetchone()[0]

    def update_job(self, job_id: int, **fields: Any) -> dict[str, Any]:
        """Set any of JOB_FIELDS; ``updated_at`` follows, ``started_at`` / ``finished_at`` are filled in
        when the state first becomes running / terminal. -> the job."""
        unknown = sorted(set(fields) - JOB_FIELDS)
        if unknown:
            raise StoreError(f"update_job got unknown field(s) {unknown}.", fix=f"use only {sorted(JOB_FIELDS)}.")
        for k, v in fields.items():
            if k == "state" and v not in STATES:
                raise StoreError(f"state={v!r} is not a job state.", fix=f"use one of {STATES}.")
            if k == "progress" and (_number(v, k) is None or not 0.0 <= v <= 1.0):
                raise StoreError(f"progress={v!r} is outside [0, 1].", fix="pass step / total.")
            if k in ("step", "total", "pid", "rerun_of"):
                _int(v, k, optional=True)
            if k == "exit_code" and v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise StoreError(f"exit_code={v!r} is not an integer.", fix="pass the process's return code.")
            if k == "message" or (k == "proc_start" and v is not None):
                _text(v, k, MAX_NOTE, empty=True)
            if k in ("run_dir", "log_path", "result_path") and v is not None:
                fields[k] = _text(str(v), k, MAX_NAME)
            if k == "ingested" and not isinstance(v, bool):
                raise StoreError(f"ingested={v!r} is not a bool.", fix="pass True or False.")
            if k in ("started_at", "finished_at") and v is not None and not isinstance(v, datetime):
                raise StoreError(f"{k}={v!r} is not a datetime.", fix="pass a datetime (UTC) or None.")
        now = _now()
        state = fields.get("state")
        if state == "running":
            fields.setdefault("started_at", None)
        with self._tx() as con:
            job = self._require(con, "jobs", job_id, "job")
            if fields.get("rerun_of") is not None:
                self._require(con, "jobs", fields["rerun_of"], "job")
            if state == "running" and fields["started_at"] is None:
                fields["started_at"] = job["started_at"] or now
            if state in ("succeeded", "failed", "cancelled") and "finished_at" not in fields and job["state"] != state:
                fields["finished_at"] = now
            names = sorted(fields)  # column names come from JOB_FIELDS, never from the caller's text
            sets = ", ".join(f"{k} = ?" for k in names + ["updated_at"])
            con.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [fields[k] for k in names] + [now, job_id])
            return _parse(self._require(con, "jobs", job_id, "job"), "config")

    def get_job(self, job_id: int) -> dict[str, Any]:
        with self._tx() as con:
            return _parse(self._require(con, "jobs", job_id, "job"), "config")

    def list_jobs(self, kind: str | None = None):
        """Newest first."""
        with self._tx() as con:
            return _frame(con.execute("SELECT * FROM jobs WHERE ? IS NULL OR kind = ? ORDER BY id DESC", [kind, kind]), "config")

    # ----------------------------------------------------------------------- variants and decisions
    def add_variants(self, records: Sequence[dict], job_id: int | None = None) -> list[int]:
        """Store Variant.to_record() dicts (steps and reward trace kept as JSON) -> their ids, in order.
        A record already stored for the same job (pair, direction, text) keeps its row and id."""
        _int(job_id, "job_id", minimum=1, optional=True)
        rows = [_variant_row(r, job_id, i) for i, r in enumerate(records)]
        return self._insert_variants(rows, job_id)[0]

    def _insert_variants(self, rows: list[dict], job_id: int | None, note: str | None = None) -> tuple[list[int], int]:
        """-> (ids, how many were new); with ``note``, each newly inserted variant also gets an 'approve' decision carrying it."""
        cols = ["key", "job_id", "pair_id", "direction", "prompt", "original_chosen", "original_rejected", "text", "r_variant",
                "r_trace", "r_chosen", "r_rejected", "margin", "perplexity", "is_inversion", "steps", "trace"]
        sql = f"INSERT INTO variants ({', '.join(cols)}, created_at) VALUES ({', '.join('?' * len(cols))}, ?) RETURNING id"
        now, ids, new = _now(), [], 0
        with self._tx() as con:
            if job_id is not None:
                self._require(con, "jobs", job_id, "job")
            for row in rows:
                found = con.execute("SELECT id FROM variants WHERE key = ?", [row["key"]]).fetchone()
                if found:
                    ids.append(found[0])
                    continue
                ids.append(con.execute(sql, [row[c] for c in cols] + [now]).fetchone()[0])
                new += 1
                if note is not None:
                    con.execute("INSERT INTO decisions (variant_id, decision, edited_text, note, decided_at) "
                                "VALUES (?, 'approve', NULL, ?, ?)", [ids[-1], note, now])
        return ids, new

    def list_variants(self, inversions_only: bool = True, decision: str | None = None, job_id: int | None = None):
        """One row per variant (without its decoding steps) with ``status`` pending / approved / rejected
        from its latest decision; ``decision`` filters on that status."""
        if decision is not None and decision not in STATUSES:
            raise StoreError(f"decision={decision!r} is not a status to filter on.", fix=f"use None or one of {STATUSES}.")
        with self._tx() as con:
            cur = con.execute(f"SELECT {_VARIANT_LIST_COLUMNS} FROM ({_VARIANT_STATUS}) WHERE (NOT ? OR is_inversion) "
                              "AND (? IS NULL OR status = ?) AND (? IS NULL OR job_id = ?) ORDER BY id",
                              [bool(inversions_only), decision, decision, job_id, job_id])
            return _frame(cur, "prompt")

    def get_variant(self, variant_id: int) -> dict[str, Any]:
        """Everything about one variant: steps, reward trace, latest decision and the decision history."""
        with self._tx() as con:
            self._require(con, "variants", variant_id, "variant")
            row = _rows(con.execute(f"SELECT * FROM ({_VARIANT_STATUS}) WHERE id = ?", [variant_id]))[0]
            row["history"] = _rows(con.execute("SELECT id, decision, edited_text, note, decided_at FROM decisions "
                                               "WHERE variant_id = ? ORDER BY id", [variant_id]))
        return _parse(row, "prompt", "steps", "trace")

    def decide(self, variant_id: int, decision: str, edited_text: str | None = None, note: str = "") -> int:
        """Record a human decision -> its id. The latest decision of a variant counts; older ones stay as history."""
        if decision not in DECISIONS:
            raise StoreError(f"decision={decision!r} is not a decision.", fix=f"use one of {DECISIONS}.")
        if decision == "edit":
            _text(edited_text, "edited_text")
        elif edited_text is not None:
            raise StoreError(f"edited_text was given with decision={decision!r}.", fix="use decision='edit' to change the text.")
        _text(note, "note", MAX_NOTE, empty=True)
        with self._tx() as con:
            v = self._require(con, "variants", variant_id, "variant")
            if decision != "reject" and not v["is_inversion"]:
                raise StoreError(f"variant {variant_id} is not an inversion, so it adds no pair to approve.",
                                 fix="reject it, or approve an inversion (list_variants(inversions_only=True)).")
            if decision == "edit":
                chosen, rejected = added_pair(v["direction"], v["original_chosen"], v["original_rejected"], edited_text)
                if chosen == rejected:
                    raise StoreError("the edited text equals the other response of its pair.", fix="edit it so the two differ.")
            return con.execute("INSERT INTO decisions (variant_id, decision, edited_text, note, decided_at) "
                               "VALUES (?, ?, ?, ?, ?) RETURNING id", [variant_id, decision, edited_text, note, _now()]).fetchone()[0]

    def approved_pairs(self) -> list[PreferencePair]:
        """The new pair of every approved inversion (with its edited text, if edited), in variant order."""
        with self._tx() as con:
            rows = _rows(con.execute(f"SELECT * FROM ({_VARIANT_STATUS}) WHERE status = 'approved' AND is_inversion ORDER BY id"))
        pairs = []
        for r in rows:
            text = r["edited_text"] if r["decision"] == "edit" else r["text"]
            chosen, rejected = added_pair(r["direction"], r["original_chosen"], r["original_rejected"], text)
            pairs.append(PreferencePair(f"{r['pair_id']}:{r['direction']}#{r['id']}", tuple(json.loads(r["prompt"])), chosen, rejected))
        return pairs

    # ----------------------------------------------------------------------- evaluation results
    def add_eval_result(self, label: str, job_id: int | None, metrics: dict) -> int:
        """-> id; for a job, the same label again returns the existing row (ingestion is idempotent)."""
        params = [_text(label, "label", MAX_NAME), _int(job_id, "job_id", minimum=1, optional=True), _json(metrics, "metrics"), _now()]
        with self._tx() as con:
            if job_id is not None:
                self._require(con, "jobs", job_id, "job")
                found = con.execute("SELECT id FROM eval_results WHERE job_id = ? AND label = ?", [job_id, label]).fetchone()
                if found:
                    return found[0]
            return con.execute("INSERT INTO eval_results (label, job_id, metrics, created_at) VALUES (?, ?, ?, ?) RETURNING id",
                               params).fetchone()[0]

    def list_eval_results(self):
        with self._tx() as con:
            return _frame(con.execute("SELECT * FROM eval_results ORDER BY id"), "metrics")

    # ----------------------------------------------------------------------- TRL files
    def export_trl(self, path: str | os.PathLike) -> int:
        """Write the approved pairs as TRL rows (prompt messages, chosen, rejected) to ``.jsonl`` or
        ``.parquet`` (by suffix), atomically -> rows written."""
        path = Path(path)
        if path.suffix.lower() not in (".jsonl", ".parquet"):
            raise StoreError(f"{path.name}: unknown export format.", fix="name the file .jsonl or .parquet.")
        rows = [p.to_trl() for p in self.approved_pairs()]
        if path.suffix.lower() == ".jsonl":
            write_jsonl(path, rows)
            return len(rows)
        import pyarrow as pa
        import pyarrow.parquet as pq

        message = pa.struct([("role", pa.string()), ("content", pa.string())])
        schema = pa.schema([("prompt", pa.list_(message)), ("chosen", pa.string()), ("rejected", pa.string())])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return len(rows)

    def import_trl(self, path: str | os.PathLike) -> int:
        """Read TRL (or HH) preference rows back as approved pairs -> how many were new.

        Each row becomes a variant of direction "imported" (its chosen response as the variant text,
        so an edit replaces the chosen side) with an 'approve' decision noting the file; a pair
        already in the store is skipped, so importing a file twice adds nothing. A bad row refuses the
        whole file, naming the row."""
        try:
            pairs = load_preferences(path).pairs
        except DataError as exc:
            raise StoreError(str(exc).removesuffix(f" Fix: {exc.fix}"), fix=exc.fix) from exc
        rows = []
        for p in pairs:
            prompt = _json(_messages(p.prompt, "prompt"), "prompt")
            digest = hashlib.sha256(json.dumps([prompt, p.chosen, p.rejected]).encode()).hexdigest()[:32]
            rows.append({"key": f"import:{digest}", "job_id": None, "pair_id": _text(p.pair_id, "pair_id", MAX_NAME),
                         "direction": "imported", "prompt": prompt, "original_chosen": _text(p.chosen, "chosen"),
                         "original_rejected": _text(p.rejected, "rejected"), "text": p.chosen, "is_inversion": True,
                         "steps": "[]", "trace": "[]", **{k: None for k in ("r_variant", "r_trace", "r_chosen", "r_rejected",
                                                                             "margin", "perplexity")}})
        return self._insert_variants(rows, None, note=f"imported from {Path(path).name}")[1]
