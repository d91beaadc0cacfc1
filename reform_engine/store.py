"""The project database: jobs, variants with their decoding records and human decisions in one
DuckDB file. All SQL of the workbench lives here, with user
values always passed as parameters.

Concurrency. DuckDB lets one process at a time hold a file open, and whoever holds it locks everyone
else out. So nobody holds it: every call opens a connection, runs one transaction and closes it again
(tens of milliseconds), and calls from all threads and processes take turns, first come first served,
through turns.py (an advisory ``flock`` on ``<db>.lock`` behind a FIFO queue of waiters), waited for up
to ``timeout`` seconds. The kernel drops those locks when their holder dies, even by SIGKILL, and
DuckDB's write-ahead log discards a transaction cut short, so a killed writer costs nothing but its own
unfinished write. A program holding the file outside this module (a duckdb shell) is waited out by
retrying the open. A caller only ever sees a :class:`StoreError` ("busy for 60 s, close the other
program"), never DuckDB's own errors: a full disk, text DuckDB cannot store and a damaged file
(:class:`StoreCorrupt`) each get a message saying what to do.

Backups. An existing database is snapshotted on its first use in a process and after every
``BackupConfig.every`` decisions, the newest ``keep`` kept (backups.py says how and why a byte copy
after a CHECKPOINT under the lock). Every snapshot is read back in full before it counts, so a
damaged database is found then and never rotates a good snapshot out. :func:`restore_database` and
:func:`set_aside` replace or give up a database, always keeping the current file under another name.

Job processes do not write here: they write their run directory (see runs.py) and
``jobs.refresh_job``, called by the app, copies progress and the variants a job decoded in. Checkpoints
and evaluation results are not copied here: they live in their run directories, which ``reports.py`` reads. A job process only comes here as it ends, to hand its
slot on (``jobs.hand_off``).

Schema. ``schema_version`` holds the version; ``MIGRATIONS[i]`` takes a database from version i to
i + 1, each in one transaction, on first use of a ``Store`` (and again when the file is replaced, as
by a restore); an older database is snapshotted before it is migrated. JSON (configs, metrics, prompts, decoding
steps) is stored as text and parsed on the way out.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from . import backups
from .backups import BackupConfig
from .data import DataError, PreferencePair, added_pair, load_preferences, write_jsonl
from .runs import STATES, to_jsonable
from .turns import turn

MAX_TEXT = 50_000          # characters in a response or an edited text: far above real responses
MAX_NOTE = 5_000           # characters in a note or a job message
MAX_NAME = 1_000           # characters in a name, label, kind or path
MAX_JSON = 20_000_000      # characters of one JSON value (a config, metrics, a variant's decoding steps, a score set)
SCORE_SETS_KEPT = 32       # newest score sets kept: a few data sets under a few checkpoints, ~2 MB each at 40k pairs
DECISIONS = ("approve", "reject", "edit")          # edit = approve with the variant's text replaced
STATUSES = ("pending", "approved", "rejected")     # what a variant's latest decision makes it
MIN_TOKENS = 2             # a 1-token "response" is no answer a reader would judge: never an inversion, never sent
DECODED = ("lower", "raise")                       # variants from controlled decoding (decoding.DIRECTIONS)
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
    [  # 3: no copies of results: checkpoints and evaluation results live in their run directories (reports.py reads them)
        "DROP TABLE IF EXISTS checkpoints",
        "DROP SEQUENCE IF EXISTS checkpoints_id",
        "DROP TABLE IF EXISTS eval_results",
        "DROP SEQUENCE IF EXISTS eval_results_id",
    ],
    [  # 4: who decided (NULL for decisions stored before names were asked for)
        "ALTER TABLE decisions ADD COLUMN reviewer VARCHAR",
    ],
    [  # 5: the verdict's flags (NULL = unknown: variants stored before they were checked)
        "ALTER TABLE variants ADD COLUMN plain_perplexity DOUBLE",
        "ALTER TABLE variants ADD COLUMN fluent BOOLEAN",
        "ALTER TABLE variants ADD COLUMN truncated BOOLEAN",
    ],
    [  # 6: the data's scores under a reward model, so a page revisit or a restart never scores the same data twice
        # (score_cache.py makes the key and reads the payload; a set it cannot read back is a miss)
        """CREATE TABLE score_sets (key VARCHAR PRIMARY KEY, rm_fingerprint VARCHAR NOT NULL,
           data_fingerprint VARCHAR NOT NULL, row_range VARCHAR NOT NULL, max_length INTEGER NOT NULL,
           format INTEGER NOT NULL, n_pairs INTEGER NOT NULL, checksum VARCHAR NOT NULL, payload VARCHAR NOT NULL,
           created_at TIMESTAMP NOT NULL)""",
    ],
    [  # 7: whether a "lower" variant still refuses a harmful request,
        # and the source and rule that decided it (appropriateness.py; NULL = not checked)
        "ALTER TABLE variants ADD COLUMN appropriate BOOLEAN",
        "ALTER TABLE variants ADD COLUMN appropriateness VARCHAR",
    ],
    [  # 8: the policy persona a variant was decoded under (personas.py; NULL = not recorded: stored before personas)
        "ALTER TABLE variants ADD COLUMN persona VARCHAR",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

# the latest decision of each variant, and the status it gives the variant
_VARIANT_STATUS = """
    SELECT v.*, d.decision, d.edited_text, d.note, d.reviewer, d.decided_at,
           CASE WHEN d.decision IS NULL THEN 'pending' WHEN d.decision = 'reject' THEN 'rejected' ELSE 'approved' END AS status
    FROM variants v LEFT JOIN (
        SELECT *, row_number() OVER (PARTITION BY variant_id ORDER BY id DESC) AS latest FROM decisions
    ) d ON d.variant_id = v.id AND d.latest = 1"""
_VARIANT_LIST_COLUMNS = ("id, job_id, pair_id, direction, prompt, original_chosen, original_rejected, text, r_variant, "
                         "r_trace, r_chosen, r_rejected, margin, perplexity, plain_perplexity, fluent, truncated, is_inversion, "
                         "appropriate, appropriateness, persona, status, decision, edited_text, note, reviewer, decided_at")


class StoreError(ValueError):
    """A bad request to the store (unknown id, oversized text, invalid value), or one it could not carry
    out (busy, disk full): says what to do instead."""

    def __init__(self, message: str, fix: str = ""):
        self.message, self.fix = message, fix
        super().__init__(message + (f" Fix: {fix}" if fix else ""))


class StoreCorrupt(StoreError):
    """The database file is damaged (truncated, overwritten in part): DuckDB cannot read it back."""

    def __init__(self, db: Path, detail: str):
        self.db, self.detail = Path(db), detail
        super().__init__(f"the project database {db} is damaged and cannot be read ({detail}).",
                         fix="restore the newest good backup (python -m reform_engine restore), or set the file aside "
                             "and start a fresh database; the damaged file is kept either way.")


@dataclass(frozen=True)
class ImportResult:
    added: int            # pairs new to the store, each an approved imported variant
    already_present: int  # rows skipped: the same prompt, chosen and rejected is already stored or approved


@dataclass(frozen=True)
class RestoreResult:
    db: Path
    restored_from: Path
    kept_aside: Path | None            # where the replaced file is now (None: there was none)
    skipped: tuple[str, ...] = ()      # newer snapshots that failed to read back, with why


_DISK_FULL = ("no space left", "disk full", "file too large", "quota exceeded")
_DAMAGED = ("corrupt", "checksum", "not a valid duckdb database", "could not read enough bytes", "failed to read",
            "invalid block", "deserializ")


def _store_error(exc: BaseException, db: Path) -> StoreError:
    """A DuckDB error -> the StoreError that says what happened and what to do."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    low = detail.lower()
    if isinstance(exc, StoreError):
        return exc
    if any(s in low for s in _DISK_FULL):
        return StoreError(f"the disk holding {db} is full, so nothing was stored ({detail}).",
                          fix="free some disk space, then do it again; everything stored before is intact.")
    if isinstance(exc, duckdb.SerializationException) or any(s in low for s in _DAMAGED):
        return StoreCorrupt(db, detail)
    if "surrogate" in low:
        return StoreError(f"the text contains a lone surrogate, which cannot be stored ({detail}).",
                          fix="remove the broken character (an unpaired UTF-16 half) from the text.")
    if isinstance(exc, duckdb.PermissionException) or "permission denied" in low or "read-only" in low:
        return StoreError(f"the project database {db} cannot be written ({detail}).",
                          fix="give this user write access to the file and its folder, or use another project folder.")
    return StoreError(f"the project database {db} refused the request ({type(exc).__name__}: {detail}).",
                      fix="try again; if it repeats, back it up (python -m reform_engine backup) and report the message.")


def default_store_path() -> Path:
    """``$REFORM_PROJECT_DIR/reform.duckdb``, or ``./project_data/reform.duckdb``."""
    return Path(os.environ.get("REFORM_PROJECT_DIR") or "project_data") / "reform.duckdb"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # stored as UTC


# --------------------------------------------------------------------------- input checks (before any write)

def _encodable(value: str, what: str) -> str:
    """Refuse text that is not valid Unicode (a lone surrogate, e.g. from JSON's "\\ud800"): DuckDB stores UTF-8 only."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StoreError(f"{what} contains a lone surrogate ({value[exc.start]!r} at character {exc.start:,}), which is "
                         "not valid text.", fix=f"remove or replace that character in {what}.") from None
    return value


def _text(value: Any, what: str, limit: int = MAX_TEXT, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise StoreError(f"{what} must be text, got {type(value).__name__}.", fix=f"pass {what} as a string.")
    _encodable(value, what)
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
    return _encodable(text, what)


def _messages(value: Any, what: str) -> list[dict[str, str]]:
    ok = isinstance(value, (list, tuple)) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise StoreError(f"{what} must be a non-empty list of {{'role', 'content'}} messages.",
                         fix="pass the prompt as PreferencePair.prompt or Variant.to_record()['prompt'].")
    msgs = [{"role": m["role"], "content": m["content"]} for m in value]
    _text(json.dumps(msgs), what, MAX_TEXT * 4)
    return msgs


def too_short(record: dict) -> str | None:
    """Why a decoded variant record (Variant.to_record()) is too short to send to curation, or None.
    Counts its ``n_tokens``, else its non-EOS decoding steps; a record with neither is not checked."""
    if not str(record.get("text", "")).strip():
        return "its text is empty"
    n = record.get("n_tokens")
    if n is None and record.get("steps"):
        n = sum(not s.get("is_eos") for s in record["steps"] if isinstance(s, dict))
    if n is not None and n < MIN_TOKENS:
        return f"it is {n} token{'' if n == 1 else 's'} long; a variant needs at least {MIN_TOKENS}"
    return None


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
    for flag in ("fluent", "truncated", "appropriate"):
        if rec.get(flag) is not None and not isinstance(rec[flag], bool):
            raise StoreError(f"{flag} of variant record {i} is {rec[flag]!r}.", fix="pass True, False or None (unknown).")
    if rec["is_inversion"] and rec.get("fluent") is False:
        raise StoreError(f"variant record {i} is marked an inversion but flagged not fluent.",
                         fix="judge it with inversions.make_variant, which never marks a not-fluent variant an inversion.")
    short = too_short(rec) if job_id is None and direction in DECODED else None
    if short:
        raise StoreError(f"variant record {i} cannot be sent to curation: {short}.",
                         fix="decode a longer variant (raise max new tokens, or keep the end-of-text token from ending it at once).")
    steps = rec.get("steps") or []
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise StoreError(f"steps of variant record {i} must be a list of step dicts.", fix="pass decoding.StepRecord dicts.")
    row = {"job_id": job_id, "pair_id": _text(rec["pair_id"], f"pair_id of variant record {i}", MAX_NAME),
           "direction": direction, "prompt": _json(_messages(rec["prompt"], f"prompt of variant record {i}"), "prompt"),
           "original_chosen": _text(rec["original_chosen"], f"original_chosen of variant record {i}"),
           "original_rejected": _text(rec["original_rejected"], f"original_rejected of variant record {i}"),
           "text": text, "is_inversion": rec["is_inversion"], "steps": _json(steps, f"steps of variant record {i}"),
           "trace": _json([s.get("running_reward") for s in steps], "reward trace")}
    for k in ("r_variant", "r_trace", "r_chosen", "r_rejected", "margin", "perplexity", "plain_perplexity"):
        row[k] = _number(rec.get(k), f"{k} of variant record {i}")
    row["fluent"], row["truncated"], row["appropriate"] = rec.get("fluent"), rec.get("truncated"), rec.get("appropriate")
    reason = rec.get("appropriateness")
    row["appropriateness"] = None if reason is None else _text(reason, f"appropriateness of variant record {i}", MAX_NOTE)
    row["persona"] = None if rec.get("persona") is None else _text(rec["persona"], f"persona of variant record {i}")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    row["key"] = f"job{job_id}:{row['pair_id']}:{direction}:{digest}"  # one variant once per job: ingestion is idempotent
    return row


# --------------------------------------------------------------------------- taking turns on the file

def _turn(lock_path: Path, deadline: float, db: Path):
    """Exclusive use of the database among all threads and processes using this module, in the order they asked."""
    return turn(lock_path, deadline, lambda: _busy(db))


_STARTED: set[Path] = set()  # databases snapshotted on their first use in this process


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file: changes when a restore or a fresh start puts another file there."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


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

    def __init__(self, path: str | os.PathLike | None = None, *, timeout: float = 60.0, backup: BackupConfig | None = None):
        self.path = Path(path or default_store_path()).expanduser().resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.backup_config = backup or BackupConfig()
        self.backup_error: StoreError | None = None  # why the last automatic snapshot failed (the change itself was stored)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._migrated: tuple[int, int] | None = None  # (device, inode) of the file last migrated
        with self._tx(migrate=False) as con:
            version = self._version(con)
        if version and self.backup_config.on_start and self.path not in _STARTED:
            _STARTED.add(self.path)  # once per process: a page run or a CLI call is not a start
            try:
                self.backup(reason="start")  # before any migration: the file as the older code left it
            except StoreCorrupt:
                _STARTED.discard(self.path)
                raise
            except StoreError as exc:
                self.backup_error = exc
        with self._tx():
            pass  # creates or migrates the schema

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
    def _tx(self, *, migrate: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction under the turn; any DuckDB error leaves as a StoreError, the transaction rolled back."""
        deadline = time.monotonic() + self.timeout
        with _turn(self._lock_path, deadline, self.path):
            try:
                con = self._open(deadline)
            except duckdb.Error as exc:
                raise _store_error(exc, self.path) from exc
            try:
                try:
                    con.execute("BEGIN TRANSACTION")
                    if migrate and self._migrated != file_identity(self.path):
                        self._migrate(con)
                    yield con
                    con.execute("COMMIT")
                except BaseException as exc:
                    try:
                        con.execute("ROLLBACK")
                    except duckdb.Error:
                        pass  # the transaction is already gone; the original error is the one to see
                    if isinstance(exc, duckdb.Error):
                        raise _store_error(exc, self.path) from exc
                    raise
                if migrate:
                    self._migrated = file_identity(self.path)
            finally:
                try:
                    con.close()
                except duckdb.Error:
                    pass  # closing checkpoints; the commit is already in the write-ahead log, replayed on the next open

    @staticmethod
    def _version(con) -> int:
        exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'").fetchone()[0]
        return (con.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0) if exists else 0

    def _migrate(self, con) -> None:
        version = self._version(con)
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}; this code knows up to {SCHEMA_VERSION}.",
                             fix="update the workbench, or point REFORM_PROJECT_DIR at another project.")
        for v in range(version, SCHEMA_VERSION):
            for sql in MIGRATIONS[v]:
                con.execute(sql)
            con.execute("INSERT INTO schema_version VALUES (?, ?)", [v + 1, _now()])

    # ----------------------------------------------------------------------- backups
    def backup(self, to: str | os.PathLike | None = None, *, reason: str = "manual") -> Path:
        """Snapshot the database -> the snapshot's path. Into the backup folder (then the oldest beyond
        ``keep`` are deleted), or to ``to``: a new file, or a folder to put it in. The copy is taken
        under the lock right after a CHECKPOINT and read back in full before it counts; a database
        that fails that read raises :class:`StoreCorrupt` and leaves no snapshot behind."""
        dest = backups.snapshot_path(self.path, self.backup_config, reason)
        if to is not None:
            to = Path(to).expanduser()
            dest = to / dest.name if to.is_dir() else to
            if dest.exists():
                raise StoreError(f"{dest} already exists.", fix="name a new file, or a folder to put the snapshot in.")
        tmp = backups.temp_beside(dest)
        deadline = time.monotonic() + self.timeout
        try:
            with _turn(self._lock_path, deadline, self.path):
                try:
                    con = self._open(deadline)
                    try:
                        con.execute("CHECKPOINT")  # everything committed moves from the log into the file
                    finally:
                        con.close()
                except duckdb.Error as exc:
                    raise _store_error(exc, self.path) from exc
                if backups.wal_of(self.path).exists() and backups.wal_of(self.path).stat().st_size:
                    raise StoreError(f"{self.path} kept a write-ahead log after a checkpoint, so a copy would miss part of it.",
                                     fix="close other programs that have it open (e.g. a duckdb shell), then back up again.")
                backups.copy_file(self.path, tmp)
            try:
                verify_database(tmp)  # outside the lock: the copy is ours alone
            except StoreCorrupt as exc:  # a byte copy fails where the database itself would
                raise StoreCorrupt(self.path, exc.detail.replace(str(tmp), str(self.path))) from None
            backups.publish(tmp, dest)
        except OSError as exc:
            raise StoreError(f"could not write the snapshot {dest} ({exc}).",
                             fix="free disk space or make the backup folder writable (REFORM_BACKUP_DIR moves it).") from exc
        finally:
            tmp.unlink(missing_ok=True)
        if to is None:
            backups.rotate(self.path, self.backup_config)
        return dest

    def _snapshot_every(self, first_id: int, last_id: int) -> None:
        """Snapshot when decisions first_id..last_id crossed a multiple of ``every``. A failed snapshot is
        kept in ``backup_error`` rather than raised: the decisions themselves are stored."""
        every = self.backup_config.every
        if every and last_id // every > (first_id - 1) // every:
            try:
                self.backup(reason="auto")
                self.backup_error = None
            except StoreError as exc:
                self.backup_error = exc

    def list_backups(self) -> list[Path]:
        """This database's snapshots in the backup folder, newest first."""
        return backups.list_backups(self.path, self.backup_config)

    @staticmethod
    def _require(con, table: str, row_id: Any, what: str) -> dict[str, Any]:
        _int(row_id, f"{what} id", minimum=1)
        rows = _rows(con.execute(f"SELECT * FROM {table} WHERE id = ?", [row_id]))  # table: a constant of this module
        if not rows:
            raise StoreError(f"there is no {what} with id {row_id}.", fix=f"pick an id from list_{table}().")
        return rows[0]

    # ----------------------------------------------------------------------- jobs
    def add_job(self, kind: str, config: dict, run_dir: str | None = None, state: str = "pending") -> int:
        """Record a job -> its id. ``state``: 'pending' (about to start) or 'queued' (waiting for a
        slot, see claim_queued_job). A ``run_dir`` that an unfinished job owns is refused in the same
        transaction as the insert, so two racing starts never share a directory."""
        if not isinstance(kind, str) or not re.fullmatch(r"[a-z][a-z0-9-]{0,63}", kind):
            raise StoreError(f"kind={kind!r} is not a job name.", fix="use a CLI command name such as 'train-rm'.")
        if not isinstance(config, dict):
            raise StoreError(f"config is a {type(config).__name__}.", fix="pass the job config as a dict (dataclasses.asdict).")
        if state not in ("pending", "queued"):
            raise StoreError(f"a job cannot start as {state!r}.", fix="add it as 'pending' or 'queued'.")
        params = [kind, _json(config, "config"), state, None if run_dir is None else _text(str(run_dir), "run_dir", MAX_NAME), _now()]
        with self._tx() as con:
            if run_dir is not None:
                owner = con.execute("SELECT id FROM jobs WHERE run_dir = ? AND state IN ('queued', 'pending', 'running') "
                                    "ORDER BY id LIMIT 1", [params[3]]).fetchone()
                if owner:
                    raise StoreError(f"job {owner[0]} is still using {run_dir}.", fix="wait for it, cancel it, or pick another run_dir.")
            return con.execute("INSERT INTO jobs (kind, config, state, run_dir, created_at, updated_at) "
                               "VALUES (?, ?, ?, ?, ?, ?) RETURNING id", params + [params[-1]]).fetchone()[0]

    def claim_queued_job(self, limit: int) -> dict[str, Any] | None:
        """The oldest queued job, turned 'pending' in the same transaction that finds fewer than
        ``limit`` jobs pending or running -> that job (the caller starts it), or None when no slot is
        free or nothing waits. Schedulers in several processes never fill one slot twice."""
        _int(limit, "limit", minimum=1)
        with self._tx() as con:
            busy = con.execute("SELECT count(*) FROM jobs WHERE state IN ('pending', 'running')").fetchone()[0]
            nxt = None if busy >= limit else con.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
            if nxt is None:
                return None
            con.execute("UPDATE jobs SET state = 'pending', updated_at = ? WHERE id = ?", [_now(), nxt[0]])
            return _parse(self._require(con, "jobs", nxt[0], "job"), "config")

    def cancel_queued_job(self, job_id: int) -> bool:
        """Take a job out of the queue (state cancelled) if it is still queued -> whether it was; a
        scheduler that claimed it first wins, and the caller then stops it as a started job."""
        _int(job_id, "job id", minimum=1)
        now = _now()
        with self._tx() as con:
            self._require(con, "jobs", job_id, "job")
            cancelled = con.execute("UPDATE jobs SET state = 'cancelled', message = 'cancelled while queued', updated_at = ?, "
                                    "finished_at = ? WHERE id = ? AND state = 'queued' RETURNING id", [now, now, job_id]).fetchone()
            return cancelled is not None

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

    # ----------------------------------------------------------------------- score sets (score_cache.py)
    def get_score_set(self, key: str) -> dict[str, Any] | None:
        """The score set stored under ``key`` (its columns, the payload as stored text), or None."""
        _text(key, "key", MAX_NAME)
        with self._tx() as con:
            rows = _rows(con.execute("SELECT * FROM score_sets WHERE key = ?", [key]))
        return rows[0] if rows else None

    def put_score_set(self, key: str, *, rm_fingerprint: str, data_fingerprint: str, row_range: str, max_length: int,
                      format: int, n_pairs: int, checksum: str, payload: str, keep: int = SCORE_SETS_KEPT) -> None:
        """Store (or replace) the score set under ``key``; only the ``keep`` newest sets stay, so the file
        does not grow with every data set and checkpoint ever scored."""
        for name, value in (("key", key), ("rm_fingerprint", rm_fingerprint), ("data_fingerprint", data_fingerprint),
                            ("checksum", checksum)):
            _text(value, name, MAX_NAME)
        _text(row_range, "row_range", MAX_NAME, empty=True)
        _text(payload, "payload", MAX_JSON)
        for name, value in (("max_length", max_length), ("format", format), ("n_pairs", n_pairs)):
            _int(value, name)
        _int(keep, "keep", minimum=1)
        with self._tx() as con:
            con.execute("DELETE FROM score_sets WHERE key = ?", [key])
            con.execute("INSERT INTO score_sets (key, rm_fingerprint, data_fingerprint, row_range, max_length, format, n_pairs, "
                        "checksum, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [key, rm_fingerprint, data_fingerprint, row_range, max_length, format, n_pairs, checksum, payload, _now()])
            con.execute("DELETE FROM score_sets WHERE key NOT IN (SELECT key FROM score_sets ORDER BY created_at DESC, key "
                        "LIMIT ?)", [keep])

    # ----------------------------------------------------------------------- variants and decisions
    def add_variants(self, records: Sequence[dict], job_id: int | None = None, resumed: Sequence[int] = ()) -> list[int]:
        """Store Variant.to_record() dicts (steps and reward trace kept as JSON) -> their ids, in order.
        A record already stored for the same job (pair, direction, text) keeps its row and id; so does one
        stored for a job in ``resumed``: the earlier jobs this one resumed in the same run directory, which
        ingested the stages they finished."""
        _int(job_id, "job_id", minimum=1, optional=True)
        for earlier in resumed:
            _int(earlier, "resumed job id", minimum=1)
        rows = [_variant_row(r, job_id, i) for i, r in enumerate(records)]
        return self._insert_variants(rows, job_id, aliases=[f"job{j}:" for j in resumed])[0]

    def _insert_variants(self, rows: list[dict], job_id: int | None, note: str | None = None,
                         aliases: Sequence[str] = ()) -> tuple[list[int], int]:
        """-> (ids, how many were new); with ``note``, each newly inserted variant also gets an 'approve'
        decision carrying it. A row with a ``content`` digest (an import) whose pair an approved variant
        already adds is skipped (its id is None). ``aliases``: key prefixes (``job7:``) under which a row
        counts as already stored too."""
        cols = ["key", "job_id", "pair_id", "direction", "prompt", "original_chosen", "original_rejected", "text", "r_variant",
                "r_trace", "r_chosen", "r_rejected", "margin", "perplexity", "plain_perplexity", "fluent", "truncated",
                "is_inversion", "steps", "trace", "appropriate", "appropriateness", "persona"]
        sql = f"INSERT INTO variants ({', '.join(cols)}, created_at) VALUES ({', '.join('?' * len(cols))}, ?) RETURNING id"
        now, ids, new, decided = _now(), [], 0, []
        with self._tx() as con:
            if job_id is not None:
                self._require(con, "jobs", job_id, "job")
            approved = {_pair_digest(r["prompt"], *self._pair_of(r)) for r in self._approved_rows(con)} \
                if any("content" in r for r in rows) else set()
            for row in rows:
                keys = [row["key"]] + [a + row["key"].split(":", 1)[1] for a in aliases]
                found = con.execute(f"SELECT id FROM variants WHERE key IN ({', '.join('?' * len(keys))}) ORDER BY id",
                                    keys).fetchone()
                if found or row.get("content") in approved:
                    ids.append(found[0] if found else None)
                    continue
                ids.append(con.execute(sql, [row[c] for c in cols] + [now]).fetchone()[0])
                new += 1
                if "content" in row:
                    approved.add(row["content"])
                if note is not None:
                    decided.append(con.execute("INSERT INTO decisions (variant_id, decision, edited_text, note, decided_at) "
                                               "VALUES (?, 'approve', NULL, ?, ?) RETURNING id", [ids[-1], note, now]).fetchone()[0])
        if decided:
            self._snapshot_every(decided[0], decided[-1])
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

    def variant_traces(self, directions: Sequence[str] = DECODED):
        """One row per variant of ``directions`` (by id): id, job_id, direction, r_variant, r_trace, trace
        (its running reward after each decoding step, parsed) and ends_in_eos (its last step chose EOS);
        without the candidates of each step, so every variant's trace can be read at once (proxy.py)."""
        unknown = sorted(set(directions) - set(DIRECTIONS))
        if unknown:
            raise StoreError(f"directions {unknown} are not variant directions.", fix=f"use some of {DIRECTIONS}.")
        with self._tx() as con:
            cur = con.execute("SELECT id, job_id, direction, r_variant, r_trace, trace, "
                              "coalesce(CAST(json_extract(steps, '$[#-1].is_eos') AS BOOLEAN), false) AS ends_in_eos "
                              "FROM variants WHERE list_contains(?, direction) ORDER BY id", [list(directions)])
            return _frame(cur, "trace")

    def get_variant(self, variant_id: int) -> dict[str, Any]:
        """Everything about one variant: steps, reward trace, latest decision and the decision history."""
        with self._tx() as con:
            self._require(con, "variants", variant_id, "variant")
            row = _rows(con.execute(f"SELECT * FROM ({_VARIANT_STATUS}) WHERE id = ?", [variant_id]))[0]
            row["history"] = _rows(con.execute("SELECT id, decision, edited_text, note, reviewer, decided_at FROM decisions "
                                               "WHERE variant_id = ? ORDER BY id", [variant_id]))
        return _parse(row, "prompt", "steps", "trace")

    def decide(self, variant_id: int, decision: str, edited_text: str | None = None, note: str = "", *,
               reviewer: str | None = None) -> int:
        """Record a human decision, and who made it -> its id. The latest decision of a variant counts;
        older ones stay as history. Every ``backup_config.every``-th decision also snapshots the database."""
        if reviewer is not None:
            _text(reviewer, "reviewer", MAX_NAME)
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
            decision_id = con.execute("INSERT INTO decisions (variant_id, decision, edited_text, note, reviewer, decided_at) "
                                      "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                                      [variant_id, decision, edited_text, note, reviewer and reviewer.strip(), _now()]).fetchone()[0]
        self._snapshot_every(decision_id, decision_id)
        return decision_id

    def decision_log(self) -> list[dict[str, Any]]:
        """Every decision ever made, oldest first, with its variant: approvals, rejections, edits (the
        edited text), notes, reviewer (None before names were recorded) and time (UTC)."""
        with self._tx() as con:
            rows = _rows(con.execute(
                "SELECT d.id AS decision_id, d.decided_at, d.reviewer, d.decision, d.note, d.edited_text, d.variant_id, "
                "v.job_id, v.pair_id, v.direction, v.is_inversion, v.prompt, v.original_chosen, v.original_rejected, "
                "v.text AS variant_text, v.r_variant, v.r_chosen, v.r_rejected, v.margin "
                "FROM decisions d JOIN variants v ON v.id = d.variant_id ORDER BY d.id"))
        for r in rows:
            r["prompt"] = json.loads(r["prompt"])
        return rows

    def export_decisions(self, path: str | os.PathLike) -> int:
        """Write :meth:`decision_log` to ``.jsonl`` or ``.parquet`` (by suffix), atomically -> rows written."""
        path = Path(path)
        rows = [{**r, "decided_at": r["decided_at"].isoformat() + "Z"} for r in self.decision_log()]
        return _write_rows(path, rows, None)

    @staticmethod
    def _approved_rows(con) -> list[dict[str, Any]]:
        return _rows(con.execute(f"SELECT * FROM ({_VARIANT_STATUS}) WHERE status = 'approved' AND is_inversion ORDER BY id"))

    @staticmethod
    def _pair_of(r: dict[str, Any]) -> tuple[str, str]:
        """(chosen, rejected) an approved variant row adds, with its edited text if edited."""
        text = r["edited_text"] if r["decision"] == "edit" else r["text"]
        return added_pair(r["direction"], r["original_chosen"], r["original_rejected"], text)

    def approved_pairs(self) -> list[PreferencePair]:
        """The new pair of every approved inversion (with its edited text, if edited), in variant order."""
        with self._tx() as con:
            rows = self._approved_rows(con)
        return [PreferencePair(f"{r['pair_id']}:{r['direction']}#{r['id']}", tuple(json.loads(r["prompt"])), *self._pair_of(r))
                for r in rows]

    # ----------------------------------------------------------------------- TRL files
    def export_trl(self, path: str | os.PathLike) -> int:
        """Write the approved pairs as TRL rows (prompt messages, chosen, rejected) to ``.jsonl`` or
        ``.parquet`` (by suffix), atomically -> rows written."""
        import pyarrow as pa

        path = Path(path)
        rows = [p.to_trl() for p in self.approved_pairs()]
        message = pa.struct([("role", pa.string()), ("content", pa.string())])
        return _write_rows(path, rows, pa.schema([("prompt", pa.list_(message)), ("chosen", pa.string()), ("rejected", pa.string())]))

    def import_trl(self, path: str | os.PathLike) -> ImportResult:
        """Read TRL (or HH) preference rows back as approved pairs -> how many were added and how many
        were already present.

        Each row becomes a variant of direction "imported" (its chosen response as the variant text,
        so an edit replaces the chosen side) with an 'approve' decision noting the file. A row is
        already present when a pair with the same prompt, chosen and rejected (up to surrounding
        whitespace) was imported before or is the pair of an approved variant, so exporting the
        approved pairs and importing them back adds nothing. A bad row refuses the whole file, naming the row."""
        try:
            pairs = load_preferences(path).pairs
        except DataError as exc:
            raise StoreError(str(exc).removesuffix(f" Fix: {exc.fix}"), fix=exc.fix) from exc
        rows = []
        for i, p in enumerate(pairs, start=1):
            prompt = _json(_messages(p.prompt, f"prompt of pair {i}"), f"prompt of pair {i}")
            digest = hashlib.sha256(json.dumps([prompt, p.chosen, p.rejected]).encode()).hexdigest()[:32]
            rows.append({"key": f"import:{digest}", "job_id": None, "pair_id": _text(p.pair_id, "pair_id", MAX_NAME),
                         "direction": "imported", "prompt": prompt, "original_chosen": _text(p.chosen, f"chosen of pair {i}"),
                         "original_rejected": _text(p.rejected, f"rejected of pair {i}"), "text": p.chosen, "is_inversion": True,
                         "steps": "[]", "trace": "[]", "content": _pair_digest(prompt, p.chosen, p.rejected),
                         **{k: None for k in ("r_variant", "r_trace", "r_chosen", "r_rejected", "margin", "perplexity",
                                              "plain_perplexity", "fluent", "truncated", "appropriate", "appropriateness", "persona")}})
        added = self._insert_variants(rows, None, note=f"imported from {Path(path).name}")[1]
        return ImportResult(added=added, already_present=len(rows) - added)


def _pair_digest(prompt_json: str, chosen: str, rejected: str) -> str:
    """What makes two preference pairs the same: prompt messages, chosen and rejected, stripped as exported."""
    return hashlib.sha256(json.dumps([prompt_json, chosen.strip(), rejected.strip()]).encode()).hexdigest()


def _write_rows(path: Path, rows: list[dict], schema) -> int:
    """Rows to ``.jsonl`` or ``.parquet`` (by suffix), written to a temporary file and renamed -> how many."""
    if path.suffix.lower() not in (".jsonl", ".parquet"):
        raise StoreError(f"{path.name}: unknown export format.", fix="name the file .jsonl or .parquet.")
    if path.suffix.lower() == ".jsonl":
        write_jsonl(path, rows)
        return len(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(rows)


# --------------------------------------------------------------------------- checking, restoring, giving up a file

def verify_database(path: str | os.PathLike) -> dict[str, int]:
    """Read every row of every table of a DuckDB file (opened read-only), so that any damaged block
    fails here -> rows per table. Raises :class:`StoreCorrupt` when it cannot be read, StoreError when
    it is no project database."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path} is not a file.", fix="give the path of a database file or a snapshot.")
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        if "lock" in str(exc).lower():  # in use by a program outside this module: busy, not damaged
            raise StoreError(f"{path} is open in another program ({' '.join(str(exc).split())}).",
                             fix="close it there (e.g. a duckdb shell), then try again.") from exc
        raise StoreCorrupt(path, " ".join(str(exc).split())) from exc
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
                                            "ORDER BY table_name").fetchall()]
        if "schema_version" not in tables:
            raise StoreError(f"{path} is a DuckDB file but no project database (it has no schema_version table).",
                             fix="pick a snapshot of reform.duckdb.")
        counts = {}
        for t in tables:
            name = '"' + t.replace('"', '""') + '"'  # names read from the file itself, quoted as identifiers
            counts[t] = con.execute(f"SELECT count(*), max(hash({name})) FROM {name}").fetchone()[0]  # hash(row): every column read
        return counts
    except duckdb.Error as exc:
        raise StoreCorrupt(path, " ".join(str(exc).split())) from exc
    finally:
        con.close()


def _lock_of(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


def restore_database(db: str | os.PathLike, backup: str | os.PathLike | None = None, *, config: BackupConfig | None = None,
                     timeout: float = 60.0) -> RestoreResult:
    """Put a snapshot in place of the database ``db``: ``backup``, or the newest one of the backup folder
    that reads back in full. The current file (and its write-ahead log) is kept aside first as
    ``<db>.replaced-<time>``; if it cannot be, nothing is replaced. Stores using ``db`` pick the new
    file up (and migrate it) on their next call."""
    db = Path(db).expanduser().resolve()
    config = config or BackupConfig()
    candidates = [Path(backup).expanduser()] if backup is not None else backups.list_backups(db, config)
    if not candidates:
        raise StoreError(f"there are no snapshots of {db} in {config.folder(db)}.",
                         fix="give one with --from, or set the damaged file aside and start a fresh database.")
    skipped = []
    for cand in candidates:
        try:
            verify_database(cand)
            break
        except StoreError as exc:
            if backup is not None:
                raise StoreError(f"the snapshot {cand} cannot be restored: {exc.message}",
                                 fix="pick another snapshot (python -m reform_engine restore --list).") from exc
            skipped.append(f"{cand.name}: {exc.message}")
    else:
        raise StoreError(f"none of the {len(candidates)} snapshots of {db} reads back.",
                         fix="set the damaged file aside and start a fresh database.")
    tmp = backups.temp_beside(db)
    try:
        backups.copy_file(cand, tmp)
        with _turn(_lock_of(db), time.monotonic() + timeout, db):
            aside = backups.put_in_place(tmp, db, "replaced")
    except OSError as exc:
        raise StoreError(f"could not restore {cand} to {db} ({exc}); the database is as it was.",
                         fix="free disk space or make the folder writable, then restore again.") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return RestoreResult(db, cand, aside, tuple(skipped))


def set_aside(db: str | os.PathLike, *, timeout: float = 60.0) -> Path | None:
    """Rename the database ``db`` (and its write-ahead log) to ``<db>.broken-<time>`` -> its new path
    (None when there was no file). The next use of ``db`` starts a fresh, empty database."""
    db = Path(db).expanduser().resolve()
    try:
        with _turn(_lock_of(db), time.monotonic() + timeout, db):
            return backups.move_aside(db, "broken")
    except OSError as exc:
        raise StoreError(f"could not rename {db} aside ({exc}).", fix="make its folder writable, then try again.") from exc
