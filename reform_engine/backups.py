"""Snapshots of the project database as files: where they go, what they are called, which are kept,
and the copies and renames that take and restore them. The store (store.py) decides when to take
one, holds its lock while copying and checks every copy by reading it back; nothing here speaks SQL.

A snapshot is a byte copy of the DuckDB file taken right after a CHECKPOINT, under the store's lock:
nobody writes meanwhile and the write-ahead log is empty, so the copy is the whole database at one
instant, in the same storage format, and restoring it is a rename. (``EXPORT DATABASE`` was the
alternative: portable across DuckDB versions, but a folder of files per snapshot, slower to take and
to load, and sequences and schema to re-create on restore. The check after copying gives what its
full read would have given: a damaged file is never taken for a good snapshot.)

Nothing is ever deleted but the oldest snapshots beyond ``keep``; a database that is replaced or
given up is renamed aside (``reform.duckdb.replaced-<time>``, ``.broken-<time>``), never removed.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

SUFFIX = ".duckdb"
REASONS = ("start", "auto", "manual")


@dataclass(frozen=True)
class BackupConfig:
    every: int = field(default=50, metadata={"help": "decisions between automatic snapshots (0: none but the one on start)"})
    keep: int = field(default=10, metadata={"help": "newest snapshots kept per database; older ones are deleted"})
    on_start: bool = field(default=True, metadata={"help": "snapshot an existing database on its first use in a process"})
    directory: str = field(default="", metadata={"help": "where snapshots go ('' = a 'backups' folder beside the database)"})

    def __post_init__(self):
        for name, minimum in (("every", 0), ("keep", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"BackupConfig.{name}={value!r}; give an integer >= {minimum}"
                                 + (" (0 turns automatic snapshots off)" if name == "every" else ""))

    @classmethod
    def from_env(cls, env: dict | None = None) -> BackupConfig:
        """REFORM_BACKUP_EVERY, REFORM_BACKUP_KEEP and REFORM_BACKUP_DIR over the defaults."""
        env = os.environ if env is None else env
        try:
            ints = {k: int(env[v]) for k, v in (("every", "REFORM_BACKUP_EVERY"), ("keep", "REFORM_BACKUP_KEEP")) if env.get(v)}
        except ValueError as exc:
            raise ValueError(f"REFORM_BACKUP_EVERY / REFORM_BACKUP_KEEP must be integers ({exc})") from exc
        return cls(**ints, directory=env.get("REFORM_BACKUP_DIR", ""))

    def folder(self, db: Path) -> Path:
        return Path(self.directory).expanduser() if self.directory else db.parent / "backups"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def snapshot_path(db: Path, config: BackupConfig, reason: str) -> Path:
    """A new, not yet existing name ``<stem>-<UTC time>-<reason>.duckdb`` in the backup folder."""
    if reason not in REASONS:
        raise ValueError(f"reason={reason!r}; use one of {REASONS}")
    folder = config.folder(db)
    base = f"{db.stem}-{_stamp()}-{reason}"
    path, n = folder / f"{base}{SUFFIX}", 1
    while path.exists():  # two snapshots in one microsecond: keep both
        n += 1
        path = folder / f"{base}-{n}{SUFFIX}"
    return path


def _pattern(db: Path) -> re.Pattern:
    return re.compile(re.escape(db.stem) + r"-(\d{8}T\d{6}\.\d{6}Z)-(" + "|".join(REASONS) + r")(-\d+)?" + re.escape(SUFFIX) + "$")


def list_backups(db: Path, config: BackupConfig) -> list[Path]:
    """This database's snapshots, newest first (their names carry the time they were taken)."""
    folder, pattern = config.folder(db), _pattern(db)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if pattern.match(p.name) and p.is_file()]
    return sorted(found, key=lambda p: (pattern.match(p.name).group(1), p.name), reverse=True)


def describe(path: Path, db: Path) -> dict:
    """{file, taken (UTC), reason, MB} of a snapshot, for a table."""
    m = _pattern(db).match(path.name)
    taken = datetime.strptime(m.group(1), "%Y%m%dT%H%M%S.%fZ") if m else None
    return {"file": str(path), "taken (UTC)": taken, "reason": m.group(2) if m else "", "MB": round(path.stat().st_size / 2**20, 3)}


def rotate(db: Path, config: BackupConfig) -> list[Path]:
    """Delete the snapshots beyond the newest ``keep`` (and copies abandoned by a killed process an hour
    ago or more) -> the deleted snapshots."""
    gone = list_backups(db, config)[config.keep:]
    for p in gone:
        p.unlink(missing_ok=True)
    folder = config.folder(db)
    if folder.is_dir():
        for p in folder.glob(f".{db.stem}-*.tmp"):
            try:
                if time.time() - p.stat().st_mtime > 3600:
                    p.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
    return gone


def temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on this platform; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to a new file ``dst`` (refused if it exists) and fsync it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())


def publish(tmp: Path, final: Path) -> Path:
    """Give a finished copy its final name without ever replacing a file there."""
    os.link(tmp, final)  # fails if ``final`` exists, unlike a rename
    tmp.unlink()
    _fsync_dir(final.parent)
    return final


def wal_of(db: Path) -> Path:
    return db.with_name(db.name + ".wal")


def aside_path(db: Path, why: str) -> Path:
    """``<db>.<why>-<UTC time>``: where a database that is replaced or given up is kept."""
    path = db.with_name(f"{db.name}.{why}-{_stamp()}")
    return path if not path.exists() else db.with_name(f"{path.name}-{os.getpid()}")


def move_aside(db: Path, why: str) -> Path | None:
    """Rename the database (and its write-ahead log, which belongs to it) aside -> its new path, or
    None when there was no file."""
    if not db.exists():
        return None
    aside = aside_path(db, why)
    os.rename(db, aside)
    if wal_of(db).exists():
        os.rename(wal_of(db), wal_of(aside))  # DuckDB's own naming: opening the kept file replays its log
    _fsync_dir(db.parent)
    return aside


def put_in_place(tmp: Path, db: Path, why: str) -> Path | None:
    """Make the verified copy ``tmp`` the database, keeping the current file (and its log) aside under
    another name first -> where the current file now is (None when there was none). The database path
    always names a whole file: the current one is hard-linked aside, then the copy renamed over it."""
    aside = None
    if db.exists():
        aside = aside_path(db, why)
        try:
            os.link(db, aside)
        except OSError:  # no hard links on this file system: rename, leaving a moment without a file
            os.rename(db, aside)
        if wal_of(db).exists():
            os.rename(wal_of(db), wal_of(aside))
    os.replace(tmp, db)
    _fsync_dir(db.parent)
    return aside
