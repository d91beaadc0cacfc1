"""Drawing helpers for background jobs (separate processes, reform_engine/jobs.py): a live panel of
the running and queued ones that polls ``refresh_job`` every couple of seconds (which also starts a
queued job when a slot frees), and the run history with each job's config and log tail. No engine
logic here."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC

import streamlit as st

from pages._draw import STATE_ICON, WAIT, flash, loss_figure, md_code, md_escape, show_error
from pages._project import project_store
from pages._routes import FLASH_KEY
from reform_engine.eta import ProgressClock, progress_text
from reform_engine.configs import JobConfigError
from reform_engine.jobs import (ACTIVE, adopt_run, cancel_job, max_jobs, queue_position, refresh_job, rerun_job, run_kinds,
                                start_job)
from reform_engine.store import StoreError
from reform_engine.reports import history_frame, log_tail, loss_curves, stage_status, trunk_caches

POLL_SECONDS = 2.0


def _active(store, kinds: Sequence[str] | None, job_ids: Sequence[int] | None) -> list[dict]:
    """Jobs of ``kinds`` (or with ``job_ids``) the store thinks are running, each refreshed from its run directory."""
    jobs = store.list_jobs()
    jobs = jobs[jobs["state"].isin(ACTIVE)]
    if kinds is not None:
        jobs = jobs[jobs["kind"].isin(list(kinds))]
    if job_ids is not None:
        jobs = jobs[jobs["id"].isin(list(job_ids))]
    return [refresh_job(store, int(i)) for i in sorted(jobs["id"])]


def live_jobs(key: str, kinds: Sequence[str] | None = None, job_ids: Sequence[int] | None = None) -> list[dict]:
    """Draw the running and queued jobs of ``kinds`` (progress or place in the queue, stages, log,
    cancel); while any is active the panel re-draws itself every POLL_SECONDS, and when one ends the
    whole page runs again so its results show. -> the jobs that were active at this page run."""
    store = project_store()
    running = [j for j in _active(store, kinds, job_ids) if j["state"] in ACTIVE]
    st.session_state[f"{key}_watching"] = [j["id"] for j in running]
    if running:
        st.fragment(_panel, run_every=POLL_SECONDS)(key, kinds, job_ids)
    return running


def _panel(key: str, kinds, job_ids) -> None:
    store = project_store()
    watching = st.session_state.get(f"{key}_watching", [])
    jobs = [refresh_job(store, i) for i in watching] + [j for j in _active(store, kinds, job_ids) if j["id"] not in watching]
    if any(j["state"] not in ACTIVE for j in jobs):
        st.rerun()  # one has ended: the whole page, so its results and the history show it
    for job in jobs:
        draw_job(job, key)


def queued_text(job: dict, position: int | None, slots: int) -> str:
    """The line a queued job shows instead of progress."""
    place = f"number {position} in the queue" if position else "about to start"
    return (f"{STATE_ICON['queued']} job #{job['id']} {job['kind']}: queued, {place}; it starts when a slot frees "
            f"({slots} job{'s' if slots != 1 else ''} at a time, REFORM_MAX_JOBS)")


@st.cache_resource(show_spinner=False)
def _job_clocks() -> dict[int, ProgressClock]:
    """One clock per job for the whole server, so every page and poll sees the same phase start."""
    return {}


def _time_left(job: dict) -> float | None:
    """Seconds left in the job's current phase at its rate so far (None: no count or no rate yet)."""
    if job.get("step") is None or not job.get("total"):
        return None
    started = job.get("started_at")
    started = started.replace(tzinfo=UTC).timestamp() if started is not None else None  # stored as naive UTC
    clock = _job_clocks().setdefault(int(job["id"]), ProgressClock(time.time, started=started))
    return clock.observe(int(job["step"]), int(job["total"]))


def draw_job(job: dict, key: str) -> None:
    """One running or queued job: its progress bar (or place in the queue), its stages (pipeline,
    retrain), its log and a cancel button."""
    if job["state"] == "queued":
        st.progress(0.0, text=queued_text(job, queue_position(project_store(), int(job["id"])), max_jobs()))
        cancel_button(job, key)
        return
    share = float(job["progress"] or 0.0)
    text = progress_text(job["message"], job.get("step"), job.get("total"), _time_left(job))
    st.progress(min(1.0, max(0.0, share)), text=f"{WAIT} job #{job['id']} {job['kind']}: {md_escape(text)}")
    stages = stage_status(job["run_dir"])
    if stages:
        st.caption(" → ".join(f"{STATE_ICON.get(s['state'], '')} {s['stage']}"
                              + (f" ({s['progress']:.0%})" if s["state"] == "running" else "") for s in stages))
    with st.expander("Log"):
        st.code(log_tail(job) or "(nothing logged yet)", language=None)
    cancel_button(job, key)


def cancel_button(job: dict, key: str) -> None:
    """A Cancel button that asks first: a cancelled job stops at once, and what it had not finished is lost
    (a re-run starts it from the beginning). Buttons: ``{key}_cancel_{id}``, then ``{key}_cancel_yes_{id}``
    and ``{key}_cancel_no_{id}``."""
    job_id, asking = int(job["id"]), f"{key}_cancel_asking"
    if st.session_state.get(asking) != job_id and st.button("Cancel", key=f"{key}_cancel_{job_id}"):
        st.session_state[asking] = job_id
    if st.session_state.get(asking) != job_id:
        return
    st.warning(f"Cancel job #{job_id} ({md_escape(job['kind'])})? It stops now, and what it has not finished is lost: "
               "a re-run starts it from the beginning.")
    c1, c2, _ = st.columns([1, 1, 3])
    if c1.button("Yes, cancel it", key=f"{key}_cancel_yes_{job_id}", type="primary"):
        st.session_state.pop(asking, None)
        cancel_job(project_store(), job_id, grace=5.0)
        st.rerun()
    if c2.button("No, keep it running", key=f"{key}_cancel_no_{job_id}"):
        st.session_state.pop(asking, None)
        st.rerun()


def history(key: str, kinds: Sequence[str] | None = None) -> None:
    """The run history (newest first) and, for a picked job, its loss curves (if it trained a reward
    model), config, log tail, re-run and cancel."""
    store = project_store()
    _active(store, kinds, None)  # bring running jobs up to date, whichever page started them
    frame = history_frame(store, kinds)
    _adopt_panel(key, kinds)
    if frame.empty:
        st.caption("No jobs yet.")
        return
    st.dataframe(frame, hide_index=True, key=f"{key}_history", column_config={
        "progress": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent"),
        "minutes": st.column_config.NumberColumn(format="%.1f"),
        "created_at": st.column_config.DatetimeColumn("created (UTC)"),
        "finished_at": st.column_config.DatetimeColumn("finished (UTC)")})
    ids = [int(i) for i in frame["id"]]
    kinds_of = dict(zip(ids, frame["kind"]))  # no state in the label: it changes under a drawn picker, whose label then went stale in the browser
    picked = st.selectbox("Job details", ids, key=f"{key}_job", format_func=lambda i: f"#{i} {kinds_of[i]}")
    if picked is None:
        return
    job = store.get_job(picked)
    st.caption(f"{STATE_ICON.get(job['state'], '')} {job['state']} · run directory {md_code(job['run_dir'])} · "
               f"{md_escape(job['message'])}")
    if job["state"] in ACTIVE:
        cancel_button(job, f"{key}_history")
    else:
        c1, c2 = st.columns(2)
        c1.button("Re-run", key=f"{key}_rerun", on_click=_rerun, args=(key, picked),
                  help="the same config in a fresh run directory")
        if job["state"] in ("failed", "cancelled"):
            c2.button("Resume", key=f"{key}_resume", on_click=_rerun, args=(key, picked, True),
                      help="the same config in the same run directory: what it finished is kept (stages, folds, "
                           "decoded batches, the last saved training or RL step) and only the rest runs")
    show_error(st.session_state.pop(f"{key}_rerun_error", None), "Not re-run")
    curves = loss_curves(job["run_dir"])  # a run that trained a reward model: its loss per step
    if curves:
        st.plotly_chart(loss_figure(curves), key=f"{key}_loss_{picked}")
    with st.expander("Config"):
        st.json(job["config"], expanded=False)
    _trunk_cache_panel(job["run_dir"], f"{key}_cache_{picked}")
    st.code(log_tail(job) or "(nothing logged)", language=None)


def _trunk_cache_panel(run_dir: str, key: str) -> None:
    """The frozen layers' cache the run uses: its size on disk now, and the hits and misses of each job or stage."""
    rows, lines = trunk_caches(run_dir)
    if not rows and not lines:
        return
    total = sum(r["bytes"] for r in rows) / 2**20
    with st.expander(f"Trunk cache: {total:,.0f} MB on disk" if rows else "Trunk cache"):
        if rows:
            st.dataframe([{**r, "bytes": r["bytes"] / 2**20} for r in rows], hide_index=True, key=key, column_config={
                "bytes": st.column_config.NumberColumn("MB", format="%.1f"),
                "cached_layers": st.column_config.TextColumn("layers cached")})
        else:
            st.caption("Its directories are gone (the files are safe to delete; the next job fills them again).")
        if lines:
            st.code("\n".join(lines[-8:]), language=None)


def _adopt_panel(key: str, kinds: Sequence[str] | None) -> None:
    """Add a finished run made outside the app (the command line, a benchmark script, another machine) as a job."""
    with st.expander("Add a run made outside the app"):
        st.caption("A run directory written by `python -m reform_engine <job> --run-dir D` or a benchmark script, here or "
                   "copied from another machine: its results then show on the pages like any job's, and Re-run and Resume "
                   "work on it. Its variants are not sent to Curation.")
        path = st.text_input("Run directory", key=f"{key}_adopt_dir", placeholder="/path/to/run").strip()
        kinds = run_kinds(path) if path else []
        kind = st.selectbox("Job", kinds, key=f"{key}_adopt_kind") if len(kinds) > 1 else None
        if path and len(kinds) == 1:
            st.caption(f"A {md_escape(kinds[0])} run.")
        if st.button("Add to the project", key=f"{key}_adopt", disabled=not path):
            try:
                job_id = adopt_run(project_store(), path, kind)
            except (StoreError, JobConfigError) as exc:
                show_error(exc, "Not added")
            else:
                kind = project_store().get_job(job_id)["kind"]
                if kinds is None or kind in kinds:
                    st.session_state[f"{key}_job"] = job_id
                    flash(FLASH_KEY, f"Added {md_code(path)} as job #{job_id} ({md_escape(kind)}); it is picked in the run history.")
                else:
                    flash(FLASH_KEY, f"Added {md_code(path)} as job #{job_id} ({md_escape(kind)}); its page's run history shows it.")
                st.rerun()


def start_from_page(store, kind: str, config, flash_key: str, message: Callable[[int], str], picker_key: str = "") -> None:
    """Start job ``kind`` with ``config``, point the page's job picker (session key ``picker_key``) at it,
    leave ``message(job id)`` for the page's next run and run the page again. A config or store that
    refuses raises its ValueError (StoreError) before any of that."""
    job_id = start_job(store, kind, config)
    if picker_key:
        st.session_state[picker_key] = job_id
    flash(flash_key, message(job_id))
    st.rerun()


def pick_job(store, kind: str, title: str, label: str, key: str) -> dict | None:
    """Under the subheader ``title``, a picker over the jobs of ``kind`` (the newest until one is
    picked), kept under session key ``key`` -> the picked job, refreshed from its run directory;
    None, and nothing drawn, when there is no such job."""
    jobs = store.list_jobs(kind)
    if jobs.empty:
        return None
    st.subheader(title)
    ids = [int(i) for i in jobs["id"]]
    if st.session_state.get(key) not in ids:
        st.session_state[key] = ids[0]  # the newest
    return refresh_job(store, st.selectbox(label, ids, key=key, format_func=lambda i: f"#{i} {kind}"))


def job_results(store, kind: str, *, title: str, label: str, idle: str, read: Callable[[str], object],
                draw: Callable[[object, int], None]) -> None:
    """The lower half of a page whose job makes one result: the running jobs of ``kind`` (or ``idle``
    when none), a picker over its jobs under ``title``, the picked job's state line and, once it has
    succeeded, ``draw(read(run directory), job id)``; then the history of ``kind``."""
    st.subheader("Running")
    if not live_jobs(kind, kinds=[kind]):
        st.caption(idle)
    job = pick_job(store, kind, title, label, key=f"{kind}_job")
    if job is None:
        return
    st.caption(f"{md_escape(job['state'])} · {md_escape(job['message'])} · run directory {md_code(job['run_dir'])}")
    result = read(job["run_dir"]) if job["state"] == "succeeded" else None
    if result:
        draw(result, int(job["id"]))
    st.subheader("History")
    history(f"{kind}_history", kinds=[kind])


def _rerun(key: str, job_id: int, same_run_dir: bool = False) -> None:
    try:  # a callback: it may still point the job picker at the new job
        st.session_state[f"{key}_job"] = rerun_job(project_store(), job_id, same_run_dir=same_run_dir)
    except (ValueError, OSError) as exc:
        st.session_state[f"{key}_rerun_error"] = exc
