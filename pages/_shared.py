"""Glue shared by the pages: what the workbench is working on (settings), the cached models and data
(loaded in background threads so no page blocks), and a few drawing helpers. No engine logic here.

Settings start from environment variables, so a test or a deployment can point the app at any models:

    REFORM_POLICY          policy model id or directory        (default: the offline SmolLM2-135M-Instruct)
    REFORM_REWARD_MODEL    RM checkpoint directory             (default: <project>/runs/base-rm/checkpoint)
    REFORM_COMPARE_RM      a second RM for side-by-side traces (default: none)
    REFORM_DATA            preference data: file path or hub id (default: the embedded demo set)
    REFORM_PROJECT_DIR     where uploads, runs and the project database live (default: ./project_data)
    REFORM_DEVICE          torch device for the app's models    (default: auto)
    REFORM_MAX_JOBS        background jobs running at once; the others wait, queued (default: one per 4 cores)

While background jobs run, the app's own model work (scoring, decoding, traces) keeps to
the cores they leave (``share_cpu``): two torch processes on the same cores slow each other down
many times over.
"""
from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import streamlit as st

from reform_engine.background import BackgroundTask
from reform_engine.data import DEMO_PATH, DataError, PreferencePair

SCORE_MAX_LENGTH = 1024      # tokens when scoring pairs and variants, as the CLI jobs do (prompt cut from the left)
UPLOAD_LIMIT_MB = 200        # also server.maxUploadSize in .streamlit/config.toml
SETTINGS_KEY = "app_settings"
PENDING_KEY = "curation_pending"      # this tab's hand-offs to curation (the queue is in the store)


# --------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class Settings:
    policy: str
    reward_model: str            # "" = none yet
    data: str
    rows: str                    # 'a:b' source rows of the data to work on, '' = all
    project_dir: str
    compare_rm: str
    device: str


def default_settings(env: dict | None = None) -> Settings:
    from reform_engine.models import DEFAULT_MODEL

    env = os.environ if env is None else env
    project = env.get("REFORM_PROJECT_DIR") or "project_data"
    return Settings(policy=env.get("REFORM_POLICY") or DEFAULT_MODEL,
                    reward_model=env.get("REFORM_REWARD_MODEL") or str(Path(project) / "runs" / "base-rm" / "checkpoint"),
                    data=env.get("REFORM_DATA") or str(DEMO_PATH), rows=env.get("REFORM_ROWS", ""), project_dir=project,
                    compare_rm=env.get("REFORM_COMPARE_RM", ""), device=env.get("REFORM_DEVICE") or "auto")


def settings() -> Settings:
    if SETTINGS_KEY not in st.session_state:
        st.session_state[SETTINGS_KEY] = default_settings()
    return st.session_state[SETTINGS_KEY]


def update_settings(**changes: Any) -> Settings:
    st.session_state[SETTINGS_KEY] = dataclasses.replace(settings(), **changes)
    return st.session_state[SETTINGS_KEY]


def rm_exists(path: str) -> bool:
    """A local REFORM checkpoint, or anything that is not a local path (a hub id is tried when loaded)."""
    from reform_engine.reward_model import SPEC_FILE
    from reform_engine.runs import recover_directory

    if not path:
        return False
    p = Path(path).expanduser()
    recover_directory(p)  # a save killed between its two renames left the checkpoint as .old
    if p.exists():
        return (p / SPEC_FILE).is_file() or (p / "config.json").is_file()
    return not path.startswith((".", "/", "~")) and path.count("/") <= 1  # "org/name": a hub id


def _stamp(path: str) -> int:
    """Changes when a local file or checkpoint is replaced, so cached copies are reloaded."""
    try:
        return os.stat(Path(path).expanduser()).st_mtime_ns
    except OSError:
        return 0


# --------------------------------------------------------------------------- sharing the CPU with background jobs

CPU_CHECK_SECONDS = 2.0      # how stale the count of running jobs may be when the app caps its threads
_KNOWN_STORES: dict[str, Any] = {}   # every project database this server has opened: their jobs share our cores
_cpu_lock = threading.Lock()
_cpu = {"checked_at": -math.inf, "running": 0, "full": 0}


def share_cpu() -> int:
    """Call in the thread about to run model work (torch keeps a thread count per thread): its torch
    threads become what the running jobs leave (jobs.app_threads: 1 on 2 cores while one runs), and
    the app's own default again when none runs -> that number. Safe from any thread; the store is
    read at most every CPU_CHECK_SECONDS."""
    import torch
    from reform_engine.jobs import app_threads, cpu_cores, max_jobs, running_jobs
    from reform_engine.runtime import set_cpu_threads

    with _cpu_lock:
        if not _cpu["full"]:
            _cpu["full"] = torch.get_num_threads()  # before any cap: the app's own default
        if time.monotonic() - _cpu["checked_at"] > CPU_CHECK_SECONDS:
            try:
                _cpu["running"] = sum(running_jobs(store) for store in list(_KNOWN_STORES.values()))
            except Exception:  # noqa: BLE001 - a busy or broken database must not stop the model work; keep the last count
                pass
            _cpu["checked_at"] = time.monotonic()
        try:
            n = app_threads(_cpu["running"], cores=cpu_cores(), limit=max_jobs(), full=_cpu["full"])
        except ValueError:  # a bad REFORM_MAX_JOBS: the job pages say so; here, assume one slot
            n = app_threads(_cpu["running"], cores=cpu_cores(), limit=1, full=_cpu["full"])
    set_cpu_threads(n)
    return n


# --------------------------------------------------------------------------- background loading (cached per process)

_LOAD_LOCK = threading.Lock()  # one model load at a time: transformers' lazy imports are not thread-safe


def _warm_imports() -> None:
    """Resolve the lazily imported transformers names once, under the lock, before threads race for them."""
    import transformers

    for name in ("AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoTokenizer",
                 "DynamicCache", "PreTrainedTokenizerFast"):
        getattr(transformers, name)

@st.cache_resource(show_spinner=False)
def _policy_task(name: str, device: str) -> BackgroundTask:
    def load(report):
        from reform_engine.models import DEFAULT_MODEL, converted_default_dir, load_causal_lm, load_tokenizer

        with _LOAD_LOCK:
            _warm_imports()
            if name in (DEFAULT_MODEL, "default") and not (converted_default_dir() / "model.safetensors").is_file():
                report(0, None, "converting the packaged SmolLM2 GGUF to safetensors (once, about a minute)")
            else:
                report(0, None, f"loading {name}")
            model = load_causal_lm(name, device=device)
            return model, load_tokenizer(name)
    return BackgroundTask(load, "policy")


@st.cache_resource(show_spinner=False)
def _rm_task(path: str, stamp: int, device: str) -> BackgroundTask:
    def load(report):
        from reform_engine.models import DEFAULT_MODEL, converted_default_dir
        from reform_engine.reward_model import SPEC_FILE, RewardModelSpec, load_reward_model

        report(0, None, "waiting for the other model to load")
        with _LOAD_LOCK:
            _warm_imports()
            spec_file = Path(path).expanduser() / SPEC_FILE
            report(0, None, f"loading the reward model {path}")
            if spec_file.is_file():
                import json
                base = RewardModelSpec(**json.loads(spec_file.read_text())).base_model
                if base in (DEFAULT_MODEL, "default") and not (converted_default_dir() / "model.safetensors").is_file():
                    report(0, None, "converting the packaged SmolLM2 GGUF to safetensors (once, about a minute)")
            return load_reward_model(path, device=device)
    return BackgroundTask(load, "reward-model")


@st.cache_resource(show_spinner=False)
def _data_task(source: str, rows: str, stamp: int) -> BackgroundTask:
    def load(report):
        from reform_engine.data import load_preferences, select_rows

        report(0, None, f"reading {source}")
        data = load_preferences(source, skip_invalid=True)
        pairs = select_rows(data.pairs, rows)
        if not pairs:
            raise DataError(f"no pairs in rows {rows!r} of {data.report.rows_read}.", source=source, fix="widen or clear the rows.")
        return data, pairs
    return BackgroundTask(load, "data")


@st.cache_resource(show_spinner=False)
def _scoring_task(rm_path: str, rm_stamp: int, device: str, source: str, rows: str, data_stamp: int) -> BackgroundTask:
    rm_task, data_task = _rm_task(rm_path, rm_stamp, device), _data_task(source, rows, data_stamp)

    def score(report):
        from reform_engine.influence import rank_pairs
        from reform_engine.scoring import score_pairs

        report(0, None, "waiting for the reward model and the data")
        rm_task.wait()
        data_task.wait()
        for t in (rm_task, data_task):
            if t.error is not None:
                raise t.error
        pairs = data_task.result[1]
        report(0, 2 * len(pairs), f"scoring {len(pairs)} pairs")

        def progress(done: int, total: int) -> None:
            share_cpu()  # a job may have started (or ended) since the last batch
            report(done, total, f"{done}/{total} responses scored")

        share_cpu()
        scores = score_pairs(rm_task.result, pairs, max_length=SCORE_MAX_LENGTH, on_progress=progress)
        return rank_pairs(pairs, scores)
    return BackgroundTask(score, "scoring")


def policy_task() -> BackgroundTask:
    s = settings()
    return _policy_task(s.policy, s.device)


def rm_task(path: str | None = None) -> BackgroundTask:
    s = settings()
    path = s.reward_model if path is None else path
    return _rm_task(path, _stamp(path), s.device)


def data_task() -> BackgroundTask:
    s = settings()
    return _data_task(s.data, s.rows, _stamp(s.data))


def scoring_task() -> BackgroundTask:
    s = settings()
    return _scoring_task(s.reward_model, _stamp(s.reward_model), s.device, s.data, s.rows, _stamp(s.data))


def _retry(task_fn, args) -> None:
    task_fn.clear(*args)


def require(task: BackgroundTask, label: str, *, grace: float = 0.3, retry: tuple | None = None, stop: bool = True) -> Any:
    """The task's result, or (while it runs, or when it failed) a status panel and the end of this
    page run (``stop=False``: None, and the page goes on). Quick work (a cached model) finishes within
    ``grace`` seconds without a flash of progress."""
    task.wait(grace)
    if task.state == "succeeded":
        return task.result
    if task.state == "failed":
        show_error(task.error, what=label)
        if retry is not None:
            st.button("Retry", key=f"app_retry_{task.name}", on_click=_retry, args=retry)
    else:
        _progress_panel(task, label)
    if stop:
        st.stop()
    return None


@st.fragment(run_every=1.0)
def _progress_panel(task: BackgroundTask, label: str) -> None:
    if task.finished:
        st.rerun()  # the whole page, now that its input is ready
    share = task.progress
    text = f"⏳ {label}: {task.message} ({task.elapsed:.0f} s)"
    if share is None:
        st.info(text)
    else:
        st.progress(share, text=text)


def require_policy(stop: bool = True):
    """-> (policy model, tokenizer)."""
    s = settings()
    return require(policy_task(), f"Policy {s.policy}", retry=(_policy_task, (s.policy, s.device)), stop=stop)


def require_rm(path: str | None = None, stop: bool = True):
    s = settings()
    path = s.reward_model if path is None else path
    if not rm_exists(path):
        st.warning(f"No reward model at `{path}` yet: train one on the Home page, or give a checkpoint there "
                   "(or set REFORM_REWARD_MODEL).")
        if stop:
            st.stop()
        return None
    return require(rm_task(path), f"Reward model {path}", retry=(_rm_task, (path, _stamp(path), s.device)), stop=stop)


def require_data(stop: bool = True):
    """-> (PreferenceData, the pairs in the selected rows)."""
    s = settings()
    return require(data_task(), f"Data {s.data}", retry=(_data_task, (s.data, s.rows, _stamp(s.data))), stop=stop)


def require_scored(stop: bool = True):
    """-> every pair of the selected rows with its rewards, loss and rank (list of ScoredPair)."""
    s = settings()
    if require_rm(stop=stop) is None or require_data(stop=stop) is None:
        return None
    return require(scoring_task(), "Scoring the data with the reward model",
                   retry=(_scoring_task, (s.reward_model, _stamp(s.reward_model), s.device, s.data, s.rows, _stamp(s.data))),
                   stop=stop)


@st.cache_resource(show_spinner=False)
def _decoder(policy: str, rm_path: str, rm_stamp: int, device: str):
    from reform_engine.decoding import ControlledDecoder

    model, tokenizer = _policy_task(policy, device).result
    return ControlledDecoder(model, tokenizer, _rm_task(rm_path, rm_stamp, device).result)


def require_decoder():
    """The controlled decoder on the current policy and RM (both loaded first)."""
    require_policy()
    require_rm()
    share_cpu()  # the page decodes in this thread
    s = settings()
    return _decoder(s.policy, s.reward_model, _stamp(s.reward_model), s.device)


@st.cache_data(show_spinner=False, max_entries=256)
def _trace(rm_path: str, rm_stamp: int, device: str, prompt: tuple, response: str) -> dict:
    from reform_engine.scoring import reward_trace

    share_cpu()
    t = reward_trace(_rm_task(rm_path, rm_stamp, device).result, prompt, response, max_length=SCORE_MAX_LENGTH)
    return {"pieces": t.pieces, "rewards": t.rewards, "prompt_truncated": t.prompt_truncated, "slow_path": t.slow_path}


def trace_of(prompt: tuple, response: str, rm_path: str | None = None) -> dict:
    """Per-token reward trace {pieces, rewards, prompt_truncated, slow_path} of one response under a
    loaded RM (the current one by default; call require_rm(rm_path) first)."""
    s = settings()
    path = s.reward_model if rm_path is None else rm_path
    return _trace(path, _stamp(path), s.device, tuple(prompt), response)


@st.cache_data(show_spinner=False, max_entries=256)
def _pair_rewards(rm_path: str, rm_stamp: int, device: str, prompt: tuple, chosen: str, rejected: str) -> tuple[float, float]:
    from reform_engine.scoring import score_pairs

    share_cpu()
    scores = score_pairs(_rm_task(rm_path, rm_stamp, device).result, [PreferencePair("single", prompt, chosen, rejected)],
                         max_length=SCORE_MAX_LENGTH)
    return float(scores.r_chosen[0]), float(scores.r_rejected[0])


def pair_rewards(pair: PreferencePair) -> tuple[float, float]:
    """(r+, r-) of one pair under the current RM (loaded first), scored as the dataset is."""
    s = settings()
    return _pair_rewards(s.reward_model, _stamp(s.reward_model), s.device, pair.prompt, pair.chosen, pair.rejected)


# --------------------------------------------------------------------------- the project database and the curation hand-off

@st.cache_resource(show_spinner=False)
def _store(path: str):
    from reform_engine.store import Store

    return Store(path)  # holds no connection: one instance serves every session and thread


def project_store(stop: bool = True):
    """The project's DuckDB store (``<project dir>/reform.duckdb``). When it cannot be opened: a message
    on the page and the end of this run (``stop=False``: None)."""
    import duckdb

    path = Path(settings().project_dir).expanduser().resolve() / "reform.duckdb"
    try:
        store = _store(str(path))
        _KNOWN_STORES.setdefault(str(path), store)
        return store
    except (ValueError, OSError, duckdb.Error) as exc:
        show_error(exc, f"Project database {path}")
        if stop:
            st.stop()
        return None


def send_to_curation(record: dict) -> int:
    """Store a variant (``Variant.to_record()``) in the project database for review -> how many
    variants wait for a decision. Sending the same variant again keeps its one row. This tab's
    hand-offs (without their decoding steps, with their store id) are also listed in session state."""
    (variant_id,) = project_store().add_variants([record])
    sent = st.session_state.setdefault(PENDING_KEY, [])
    if all(r["id"] != variant_id for r in sent):
        sent.append({"id": variant_id, **{k: v for k, v in record.items() if k != "steps"}})
    return len(pending_variants())


def pending_variants() -> list[dict]:
    """The Curation page's queue: variants waiting for a decision (from every tab and job), oldest first."""
    from reform_engine.curation import queue

    store = project_store(stop=False)
    return [] if store is None else queue(store).to_dict("records")


# --------------------------------------------------------------------------- drawing helpers

def show_error(exc: BaseException | None, what: str = "") -> None:
    """A readable message for any error: the engine's message and fix, never a traceback."""
    if exc is None:
        return
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, DataError) or getattr(exc, "fix", ""):  # the engine's own errors: message and fix
        message = str(exc)
    elif not isinstance(exc, (ValueError, OSError)):
        message = f"{type(exc).__name__}: {message}"
    st.error(f"{what + ': ' if what else ''}{message}")


def short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def pair_label(pair: PreferencePair) -> str:
    return f"{pair.pair_id} · {short(pair.prompt[-1]['content'], 70)}"


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{digits}f}"


def trace_figure(traces: Sequence[tuple[str, Sequence[str], Sequence[float]]], references: dict[str, float] | None = None,
                 title: str = "", height: int = 340, mark: int | None = None):
    """Plotly figure of running partial rewards: one line per (label, token pieces, rewards); each
    reference value (e.g. the original chosen and rejected rewards) is a dashed horizontal line;
    ``mark`` draws a vertical line at that token (1-based)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, pieces, rewards in traces:
        xs = list(range(1, len(rewards) + 1))
        fig.add_trace(go.Scatter(x=xs, y=list(rewards), mode="lines+markers", name=label, customdata=[repr(p) for p in pieces],
                                 hovertemplate="token %{x}: %{customdata}<br>reward %{y:.3f}<extra>" + label + "</extra>"))
    palette = ("#2e7d32", "#c62828", "#6a1b9a", "#ef6c00")
    for i, (label, value) in enumerate((references or {}).items()):
        if value is not None and not math.isnan(value):
            fig.add_hline(y=value, line_dash="dash", line_color=palette[i % len(palette)],
                          annotation_text=f"{label} {value:+.3f}", annotation_position="top left")
    if mark is not None:
        fig.add_vline(x=mark, line_dash="dot", line_color="#616161")
    fig.update_layout(title=title or None, height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                      xaxis_title="response token", yaxis_title="partial reward r(x, y≤i)",
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig
