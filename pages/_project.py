"""The project database (one ``Store`` per file for the whole server), its damage and recovery state,
the reviewer of this tab, and the hand-off of variants to curation."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from pages._cpu import watch_store
from pages._draw import show_error
from pages._keys import PENDING, REVIEWER
from pages._settings import settings

@st.cache_resource(show_spinner=False)
def _store(path: str):
    from reform_engine.backups import BackupConfig
    from reform_engine.store import Store

    return Store(path, backup=BackupConfig.from_env())  # holds no connection: one instance serves every session and thread


def project_db_path() -> Path:
    return Path(settings().project_dir).expanduser().resolve() / "reform.duckdb"


def project_store(stop: bool = True):
    """The project's DuckDB store (``<project dir>/reform.duckdb``). When it cannot be opened: a message
    on the page and the end of this run (``stop=False``: None). A damaged file raises StoreCorrupt, for
    the app's frame to show the recovery page instead of any page."""
    import duckdb

    from reform_engine.store import StoreCorrupt

    path = project_db_path()
    try:
        store = _store(str(path))
        watch_store(str(path), store)
        return store
    except StoreCorrupt:
        raise
    except (ValueError, OSError, duckdb.Error) as exc:
        show_error(exc, f"Project database {path}")
        if stop:
            st.stop()
        return None


# a damaged database, per file, for every session of this server: (device, inode) of the file then, the error
_DAMAGED: dict[str, tuple[tuple[int, int] | None, Exception]] = {}


def mark_damaged(exc: Exception) -> None:
    """Remember that the project database cannot be read: every page shows the recovery page until the
    file is replaced (a restore, a fresh start, from the app or the command line) or it is checked again."""
    from reform_engine.store import file_identity

    path = project_db_path()
    _DAMAGED[str(path)] = (file_identity(path), exc)


def damage() -> Exception | None:
    """The error that marked the project database damaged, while the same file is still there."""
    from reform_engine.store import file_identity

    path = project_db_path()
    found = _DAMAGED.get(str(path))
    if found is None:
        return None
    if found[0] != file_identity(path):  # another file is there now (restored or started afresh elsewhere)
        _DAMAGED.pop(str(path), None)
        return None
    return found[1]


def forget_damage() -> None:
    _DAMAGED.pop(str(project_db_path()), None)
    _store.clear()


def reviewer() -> str:
    """The name this tab's decisions are stored with ('' until one is given in the sidebar)."""
    return str(st.session_state.get(REVIEWER) or "").strip()


def reviewer_input() -> None:
    """The sidebar's reviewer name, prefilled from REFORM_REVIEWER."""
    if REVIEWER not in st.session_state:
        st.session_state[REVIEWER] = os.environ.get("REFORM_REVIEWER", "")
    st.text_input("Reviewer", key=REVIEWER, placeholder="your name", max_chars=200,
                  help="Stored with every decision you make on Curation, with its time and note.")
    if not reviewer():
        st.caption("Give your name to make decisions on Curation.")


def send_to_curation(record: dict) -> int:
    """Store a variant (``Variant.to_record()``) in the project database for review -> how many
    variants wait for a decision. Sending the same variant again keeps its one row. This tab's
    hand-offs (without their decoding steps, with their store id) are also listed in session state."""
    (variant_id,) = project_store().add_variants([record])
    sent = st.session_state.setdefault(PENDING, [])
    if all(r["id"] != variant_id for r in sent):
        sent.append({"id": variant_id, **{k: v for k, v in record.items() if k != "steps"}})
    return len(pending_variants())


def pending_variants() -> list[dict]:
    """The Curation page's queue: variants waiting for a decision (from every tab and job), oldest first."""
    from reform_engine.curation import queue

    store = project_store(stop=False)
    return [] if store is None else queue(store).to_dict("records")


def queue_caption() -> str:
    """The sidebar's line on the curation queue. A count that fails is a line saying so, never an
    exception; a damaged database is remembered (mark_damaged) for the frame to show the recovery page."""
    from reform_engine.curation import counts
    from reform_engine.store import StoreCorrupt, StoreError

    try:
        store = _store(str(project_db_path()))
        waiting = counts(store)["pending"]
    except StoreCorrupt as exc:
        mark_damaged(exc)
        return "The project database cannot be read."
    except (StoreError, ValueError, OSError) as exc:
        return f"Curation queue unavailable: {getattr(exc, 'message', None) or exc}"
    if store.backup_error is not None:
        return f"{waiting} variant(s) waiting for curation. Last automatic backup failed: {store.backup_error.message}"
    return f"{waiting} variant(s) waiting for curation" if waiting else ""
