"""The data scored by the reward model in use (in a background thread, like the models), and one
response's or one pair's rewards: what Home, Influential samples, Controlled decoding and Reward explorer
read."""
from __future__ import annotations

import streamlit as st

from pages._cpu import cpu_work, share_cpu
from pages._draw import md_code
from pages._loading import cached_data_task, cached_rm_task, data_args, require, require_data, require_rm, rm_args
from pages._project import _store, project_db_path
from pages._settings import settings
from reform_engine.background import BackgroundTask
from reform_engine.data import DataError, PreferencePair

_STARTED: dict[tuple, BackgroundTask] = {}  # the scoring tasks this server started, by their arguments: peeked, never started, by scores_for_job


@st.cache_resource(show_spinner=False)
def _scoring_task(rm_path: str, rm_stamp: int, device: str, trust_remote_code: bool, source: str, rows: str, data_stamp: int,
                  max_length: int, db_path: str) -> BackgroundTask:
    """-> (ranked ScoredPairs, ids of the pairs left out as longer than ``max_length``, whether the scores
    came from the project store's score cache rather than the RM, their score_cache.ScoreKey or None)."""
    rm_task, data_task = cached_rm_task(rm_path, rm_stamp, device, trust_remote_code), cached_data_task(source, rows, data_stamp)
    try:
        store = _store(db_path)
    except (ValueError, OSError):  # a damaged or busy database: the page says so elsewhere; scores are still made
        store = None

    def score(report):
        from reform_engine.influence import rank_pairs
        from reform_engine.score_cache import load_scores, save_scores, score_key
        from reform_engine.scoring import score_pairs
        from reform_engine.store import StoreError

        report(0, None, "waiting for the reward model and the data")
        rm_task.wait()
        data_task.wait()
        for t in (rm_task, data_task):
            if t.error is not None:
                raise t.error
        pairs = data_task.result[1]
        report(0, None, "looking for these scores in the project store")
        try:
            key = score_key(rm_path, source, rows, True, max_length)  # True: the app skips invalid rows
        except (OSError, ValueError):  # a file gone or unreadable since it loaded: score, keep nothing
            key = None
        scores = None
        if key is not None and store is not None:
            try:
                scores = load_scores(store, key, pairs)
            except StoreError:
                scores = None  # an unreadable store costs a scoring, never the page
        cached = scores is not None
        if not cached:
            report(0, 2 * len(pairs), f"scoring {len(pairs)} pairs")

            with cpu_work() as held:
                def progress(done: int, total: int) -> None:
                    held.update(share_cpu())  # a job may have started (or ended) since the last batch
                    report(done, total, f"{done}/{total} responses scored")

                scores = score_pairs(rm_task.result, pairs, max_length=max_length, skip_too_long=True, on_progress=progress)
        if len(scores.skipped) == len(pairs):
            raise DataError(f"none of the {len(pairs)} pairs fits the scoring limit of {max_length} tokens.", source=source,
                            fix="raise the scoring limit under Home > Models.")
        if key is not None and store is not None and not cached:
            try:
                save_scores(store, key, pairs, scores)
            except StoreError:
                pass  # kept next time the store takes it; these scores are in hand
        return rank_pairs(pairs, scores), [pairs[i].pair_id for i in scores.skipped], cached, key
    task = BackgroundTask(score, "scoring")
    _STARTED[(rm_path, rm_stamp, device, trust_remote_code, source, rows, data_stamp, max_length, db_path)] = task
    return task


def _scoring_args() -> tuple:
    s = settings()
    return (*rm_args(), *data_args(), s.score_max_length, str(project_db_path()))


def scoring_task() -> BackgroundTask:
    return _scoring_task(*_scoring_args())


def require_scored(stop: bool = True):
    """-> every scored pair of the selected rows with its rewards, loss and rank (list of ScoredPair);
    pairs too long for the scoring limit are left out (``skipped_by_scoring``)."""
    if require_rm(stop=stop) is None or require_data(stop=stop) is None:
        return None
    out = require(scoring_task(), "Scoring the data with the reward model", retry=(_scoring_task, _scoring_args()), stop=stop)
    return None if out is None else out[0]


def skipped_by_scoring() -> list[str]:
    """Ids of the pairs of the selected rows the finished scoring left out: longer than the scoring limit."""
    task = scoring_task()
    return list(task.result[1]) if task.state == "succeeded" else []


def scores_for_job() -> str:
    """The scored.jsonl of the data in use, for a job to reuse instead of scoring again ('' when this
    server has not finished scoring it, or it has no key). Written once per key under ``<project>/scores/``; the job
    checks the key beside it against its own before it trusts the file."""
    from reform_engine.influence import write_scored
    from reform_engine.score_cache import read_key

    task = _STARTED.get(_scoring_args())  # a scoring not yet started is the job's to do, not a second one beside it
    if task is None or task.state != "succeeded" or task.result[3] is None:
        return ""
    ranked, skipped, _, key = task.result
    folder = project_db_path().parent / "scores" / key.digest
    if read_key(folder) != key:
        write_scored(folder, ranked, skipped, key)  # the key is written last: a folder cut short is written again
    return str(folder / "scored.jsonl")


@st.cache_data(show_spinner=False, max_entries=256)
def _trace(rm_path: str, rm_stamp: int, device: str, trust_remote_code: bool, max_length: int, prompt: tuple,
           response: str) -> dict:
    from reform_engine.scoring import reward_trace

    with cpu_work():
        t = reward_trace(cached_rm_task(rm_path, rm_stamp, device, trust_remote_code).result, prompt, response, max_length=max_length)
    return {"pieces": t.pieces, "rewards": t.rewards, "prompt_truncated": t.prompt_truncated, "slow_path": t.slow_path}


def trace_of(prompt: tuple, response: str, rm_path: str | None = None) -> dict:
    """Per-token reward trace {pieces, rewards, prompt_truncated, slow_path} of one response under a
    loaded RM (the current one by default; call require_rm(rm_path) first)."""
    return _trace(*rm_args(rm_path), settings().score_max_length, tuple(prompt), response)


@st.cache_data(show_spinner=False, max_entries=256)
def _pair_rewards(rm_path: str, rm_stamp: int, device: str, trust_remote_code: bool, max_length: int, prompt: tuple,
                  chosen: str, rejected: str) -> tuple[float, float]:
    from reform_engine.scoring import score_pairs

    with cpu_work():
        scores = score_pairs(cached_rm_task(rm_path, rm_stamp, device, trust_remote_code).result,
                             [PreferencePair("single", prompt, chosen, rejected)], max_length=max_length)
    return float(scores.r_chosen[0]), float(scores.r_rejected[0])


def pair_rewards(pair: PreferencePair) -> tuple[float, float]:
    """(r+, r-) of one pair under the current RM (loaded first), scored as the dataset is."""
    return _pair_rewards(*rm_args(), settings().score_max_length, pair.prompt, pair.chosen, pair.rejected)


def show_scoring_skips() -> None:
    """Say whether the rewards came from the score cache, and how many pairs the scoring left out as
    longer than the scoring limit, if any."""
    task = scoring_task()
    if task.state == "succeeded" and task.result[2]:
        st.caption("Rewards read from the project store: this reward model has scored this data before.")
    skipped = skipped_by_scoring()
    if skipped:
        st.warning(f"{len(skipped)} pair(s) not scored: a response longer than the scoring limit of "
                   f"{settings().score_max_length} tokens (first: {md_code(skipped[0])}). Raise the limit under "
                   "Home > Models to score them.")
