"""Human curation of the variants: what is queued for review, what a decision on an edited text is,
the per-token trace of a stored variant, the approved pairs as a TRL file and every decision as a log.

The queue holds the true inversions (what the inversion filter lets through) and every variant a
person sent by hand from the decoding page (stored without a job), inversion or not; the other
variants of a batch job are kept in the store but not queued. Decisions themselves are written by
``Store.decide`` the moment they are made.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .data import added_pair
from .store import STATUSES

EXPORT_FORMATS = ("jsonl", "parquet")


def queue(store, status: str | None = "pending", *, every_variant: bool = False, job_id: int | None = None,
          hide_inappropriate: bool = False) -> pd.DataFrame:
    """Variants to review, oldest first (one row each, without decoding steps; see Store.list_variants).
    ``status``: pending / approved / rejected, or None for all; ``every_variant`` also lists the
    non-inversions of batch jobs; ``hide_inappropriate`` leaves out the variants judged inappropriate
    (appropriateness.py; those never checked stay)."""
    frame = store.list_variants(inversions_only=False, decision=status, job_id=job_id)
    if not every_variant:
        frame = frame[frame["is_inversion"] | frame["job_id"].isna()]
    if hide_inappropriate:
        frame = frame[frame["appropriate"].astype("boolean").fillna(True).astype(bool)]
    return frame.reset_index(drop=True)


def counts(store) -> dict[str, int]:
    """How many queued variants are pending, approved and rejected."""
    frame = queue(store, None)
    return {s: int((frame["status"] == s).sum()) for s in STATUSES}


def decision_for(variant_text: str, edited_text: str) -> tuple[str, str | None]:
    """(decision, edited_text) for approving with the text as it stands in the editor: an unchanged
    text (up to surrounding whitespace) is a plain approval, a changed one an edit."""
    if edited_text.strip() == variant_text.strip():
        return "approve", None
    return "edit", edited_text


def step_trace(steps: list[dict[str, Any]] | None) -> tuple[list[str], list[float]]:
    """(token pieces, running rewards) of a stored variant's decoding steps, the EOS choice left out."""
    kept = [s for s in steps or [] if not s.get("is_eos")]
    return [s["piece"] for s in kept], [float(s["running_reward"]) for s in kept]


def new_pair(variant: dict[str, Any]) -> tuple[str, str]:
    """(chosen, rejected) of the pair a stored variant adds (data.added_pair), with its latest edit."""
    text = variant["edited_text"] if variant.get("decision") == "edit" and variant.get("edited_text") else variant["text"]
    return added_pair(variant["direction"], variant["original_chosen"], variant["original_rejected"], text)


def export_approved(store, directory: str | Path, fmt: str = "jsonl", stem: str = "approved") -> tuple[Path, int]:
    """Write the store's approved pairs as TRL rows to a new timestamped file in ``directory`` ->
    (path, rows). Raises ValueError when nothing is approved yet (an empty file trains nothing)."""
    return _export(store.export_trl, directory, fmt, stem,
                   "no approved pairs yet; approve inversions on the Curation page first")


def export_decision_log(store, directory: str | Path, fmt: str = "jsonl", stem: str = "decisions") -> tuple[Path, int]:
    """Write every decision (Store.decision_log: approvals, rejections, edits, notes, reviewer, time) to a
    new timestamped file in ``directory`` -> (path, rows). Raises ValueError when there is none yet."""
    return _export(store.export_decisions, directory, fmt, stem,
                   "no decisions yet; approve or reject variants on the Curation page first")


def _export(write: Callable[[Path], int], directory: str | Path, fmt: str, stem: str, empty: str) -> tuple[Path, int]:
    """``write(path)`` to a new ``<stem>-<time>.<fmt>`` in ``directory`` -> (path, rows); no rows: no file, ValueError(empty)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format {fmt!r}; use one of {EXPORT_FORMATS}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = Path(directory).expanduser() / f"{stem}-{stamp}.{fmt}"
    n = write(path)
    if n == 0:
        path.unlink(missing_ok=True)
        raise ValueError(empty)
    return path, n
