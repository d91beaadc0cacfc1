"""Glue shared by the pages: what the workbench is working on (settings), the cached models and data
(loaded in background threads so no page blocks), and a few drawing helpers. No engine logic here.

Settings start from environment variables, so a test or a deployment can point the app at any models:

    REFORM_POLICY          policy model id or directory        (default: the offline SmolLM2-135M-Instruct)
    REFORM_REWARD_MODEL    RM checkpoint directory             (default: <project>/runs/base-rm/checkpoint)
    REFORM_COMPARE_RM      a second RM for side-by-side traces (default: none)
    REFORM_DATA            preference data: file path or hub id (default: the embedded demo set)
    REFORM_PROJECT_DIR     where uploads, runs and the project database live (default: ./project_data)
    REFORM_DEVICE          torch device for the app's models    (default: auto)
    REFORM_TRUST_REMOTE_CODE  1: let models run Python code they ship (default: off; also a Home toggle)
    REFORM_SCORE_MAX_LENGTH   tokens per prompt + response when scoring data (default: 1024; longer pairs are skipped)
    REFORM_REVIEWER        the reviewer name decisions are stored with (default: asked in the sidebar)
    REFORM_BACKUP_EVERY, REFORM_BACKUP_KEEP, REFORM_BACKUP_DIR   snapshots of the project database (backups.BackupConfig)
    REFORM_MAX_JOBS        background jobs running at once; the others wait, queued (default: one per 4 cores)

While background jobs run, the app's own model work (scoring, decoding, traces) keeps to
the cores they leave (``share_cpu``): two torch processes on the same cores slow each other down
many times over.
"""
from __future__ import annotations

import dataclasses
import html
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import streamlit as st

from reform_engine.background import BackgroundTask
from reform_engine.data import DEMO_PATH, DataError, PreferencePair
from reform_engine.scoring import SCORE_MAX_LENGTH

UPLOAD_LIMIT_MB = 200        # also server.maxUploadSize in .streamlit/config.toml
SETTINGS_KEY = "app_settings"
PENDING_KEY = "curation_pending"      # this tab's hand-offs to curation (the queue is in the store)
REVIEWER_KEY = "app_reviewer"         # who is deciding in this tab: stored with every decision


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
    trust_remote_code: bool = False             # models may run Python code they ship (auto_map): only by the user's leave
    score_max_length: int = SCORE_MAX_LENGTH    # tokens per prompt + response when scoring data; longer pairs are skipped


def default_settings(env: dict | None = None) -> Settings:
    from reform_engine.models import DEFAULT_MODEL

    env = os.environ if env is None else env
    project = env.get("REFORM_PROJECT_DIR") or "project_data"
    limit = env.get("REFORM_SCORE_MAX_LENGTH", "")
    return Settings(policy=env.get("REFORM_POLICY") or DEFAULT_MODEL,
                    reward_model=env.get("REFORM_REWARD_MODEL") or str(Path(project) / "runs" / "base-rm" / "checkpoint"),
                    data=env.get("REFORM_DATA") or str(DEMO_PATH), rows=env.get("REFORM_ROWS", ""), project_dir=project,
                    compare_rm=env.get("REFORM_COMPARE_RM", ""), device=env.get("REFORM_DEVICE") or "auto",
                    trust_remote_code=env.get("REFORM_TRUST_REMOTE_CODE", "").strip().lower() in ("1", "true", "yes", "on"),
                    score_max_length=max(16, int(limit)) if limit.strip().isdigit() else SCORE_MAX_LENGTH)


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
def _policy_task(name: str, device: str, trust_remote_code: bool) -> BackgroundTask:
    def load(report):
        from reform_engine.models import DEFAULT_MODEL, converted_default_dir, load_causal_lm, load_tokenizer

        with _LOAD_LOCK:
            _warm_imports()
            if name in (DEFAULT_MODEL, "default") and not (converted_default_dir() / "model.safetensors").is_file():
                report(0, None, "converting the packaged SmolLM2 GGUF to safetensors (once, about a minute)")
            else:
                report(0, None, f"loading {name}")
            model = load_causal_lm(name, device=device, trust_remote_code=trust_remote_code)
            return model, load_tokenizer(name, trust_remote_code=trust_remote_code)
    return BackgroundTask(load, "policy")


@st.cache_resource(show_spinner=False)
def _rm_task(path: str, stamp: int, device: str, trust_remote_code: bool) -> BackgroundTask:
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
            return load_reward_model(path, device=device, trust_remote_code=trust_remote_code)
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
def _scoring_task(rm_path: str, rm_stamp: int, device: str, trust_remote_code: bool, source: str, rows: str, data_stamp: int,
                  max_length: int) -> BackgroundTask:
    """-> (ranked ScoredPairs, ids of the pairs left out as longer than ``max_length``)."""
    rm_task, data_task = _rm_task(rm_path, rm_stamp, device, trust_remote_code), _data_task(source, rows, data_stamp)

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
        scores = score_pairs(rm_task.result, pairs, max_length=max_length, skip_too_long=True, on_progress=progress)
        if len(scores.skipped) == len(pairs):
            raise DataError(f"none of the {len(pairs)} pairs fits the scoring limit of {max_length} tokens.", source=source,
                            fix="raise the scoring limit under Home > Models.")
        return rank_pairs(pairs, scores), [pairs[i].pair_id for i in scores.skipped]
    return BackgroundTask(score, "scoring")


# the cached tasks' arguments for the current settings (also what a Retry button clears)
def _policy_args() -> tuple:
    s = settings()
    return s.policy, s.device, s.trust_remote_code


def _rm_args(path: str | None = None) -> tuple:
    s = settings()
    path = s.reward_model if path is None else path
    return path, _stamp(path), s.device, s.trust_remote_code


def _data_args() -> tuple:
    s = settings()
    return s.data, s.rows, _stamp(s.data)


def _scoring_args() -> tuple:
    s = settings()
    return (*_rm_args(), *_data_args(), s.score_max_length)


def policy_task() -> BackgroundTask:
    return _policy_task(*_policy_args())


def rm_task(path: str | None = None) -> BackgroundTask:
    return _rm_task(*_rm_args(path))


def data_task() -> BackgroundTask:
    return _data_task(*_data_args())


def scoring_task() -> BackgroundTask:
    return _scoring_task(*_scoring_args())


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
    text = f"⏳ {md_escape(label)}: {md_escape(task.message)} ({task.elapsed:.0f} s)"
    if share is None:
        st.info(text)
    else:
        st.progress(share, text=text)


def require_policy(stop: bool = True):
    """-> (policy model, tokenizer)."""
    return require(policy_task(), f"Policy {settings().policy}", retry=(_policy_task, _policy_args()), stop=stop)


def require_rm(path: str | None = None, stop: bool = True):
    s = settings()
    path = s.reward_model if path is None else path
    if not rm_exists(path):
        st.warning(f"No reward model at {md_code(path)} yet: train one on the Home page, or give a checkpoint there "
                   "(or set REFORM_REWARD_MODEL).")
        if stop:
            st.stop()
        return None
    return require(rm_task(path), f"Reward model {path}", retry=(_rm_task, _rm_args(path)), stop=stop)


def require_data(stop: bool = True):
    """-> (PreferenceData, the pairs in the selected rows)."""
    return require(data_task(), f"Data {settings().data}", retry=(_data_task, _data_args()), stop=stop)


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


@st.cache_resource(show_spinner=False)
def _decoder(policy: str, rm_path: str, rm_stamp: int, device: str, trust_remote_code: bool):
    from reform_engine.decoding import ControlledDecoder

    model, tokenizer = _policy_task(policy, device, trust_remote_code).result
    return ControlledDecoder(model, tokenizer, _rm_task(rm_path, rm_stamp, device, trust_remote_code).result)


def require_decoder():
    """The controlled decoder on the current policy and RM (both loaded first)."""
    require_policy()
    require_rm()
    share_cpu()  # the page decodes in this thread
    return _decoder(settings().policy, *_rm_args())


@st.cache_data(show_spinner=False, max_entries=256)
def _trace(rm_path: str, rm_stamp: int, device: str, trust_remote_code: bool, max_length: int, prompt: tuple,
           response: str) -> dict:
    from reform_engine.scoring import reward_trace

    share_cpu()
    t = reward_trace(_rm_task(rm_path, rm_stamp, device, trust_remote_code).result, prompt, response, max_length=max_length)
    return {"pieces": t.pieces, "rewards": t.rewards, "prompt_truncated": t.prompt_truncated, "slow_path": t.slow_path}


def trace_of(prompt: tuple, response: str, rm_path: str | None = None) -> dict:
    """Per-token reward trace {pieces, rewards, prompt_truncated, slow_path} of one response under a
    loaded RM (the current one by default; call require_rm(rm_path) first)."""
    return _trace(*_rm_args(rm_path), settings().score_max_length, tuple(prompt), response)


@st.cache_data(show_spinner=False, max_entries=256)
def _pair_rewards(rm_path: str, rm_stamp: int, device: str, trust_remote_code: bool, max_length: int, prompt: tuple,
                  chosen: str, rejected: str) -> tuple[float, float]:
    from reform_engine.scoring import score_pairs

    share_cpu()
    scores = score_pairs(_rm_task(rm_path, rm_stamp, device, trust_remote_code).result,
                         [PreferencePair("single", prompt, chosen, rejected)], max_length=max_length)
    return float(scores.r_chosen[0]), float(scores.r_rejected[0])


def pair_rewards(pair: PreferencePair) -> tuple[float, float]:
    """(r+, r-) of one pair under the current RM (loaded first), scored as the dataset is."""
    return _pair_rewards(*_rm_args(), settings().score_max_length, pair.prompt, pair.chosen, pair.rejected)


# --------------------------------------------------------------------------- the project database and the curation hand-off

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
        _KNOWN_STORES.setdefault(str(path), store)
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


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def mark_damaged(exc: Exception) -> None:
    """Remember that the project database cannot be read: every page shows the recovery page until the
    file is replaced (a restore, a fresh start, from the app or the command line) or it is checked again."""
    path = project_db_path()
    _DAMAGED[str(path)] = (_identity(path), exc)


def damage() -> Exception | None:
    """The error that marked the project database damaged, while the same file is still there."""
    path = project_db_path()
    found = _DAMAGED.get(str(path))
    if found is None:
        return None
    if found[0] != _identity(path):  # another file is there now (restored or started afresh elsewhere)
        _DAMAGED.pop(str(path), None)
        return None
    return found[1]


def forget_damage() -> None:
    _DAMAGED.pop(str(project_db_path()), None)
    _store.clear()


def reviewer() -> str:
    """The name this tab's decisions are stored with ('' until one is given in the sidebar)."""
    return str(st.session_state.get(REVIEWER_KEY) or "").strip()


def reviewer_input() -> None:
    """The sidebar's reviewer name, prefilled from REFORM_REVIEWER."""
    if REVIEWER_KEY not in st.session_state:
        st.session_state[REVIEWER_KEY] = os.environ.get("REFORM_REVIEWER", "")
    st.text_input("Reviewer", key=REVIEWER_KEY, placeholder="your name", max_chars=200,
                  help="Stored with every decision you make on Curation, with its time and note.")
    if not reviewer():
        st.caption("Give your name to make decisions on Curation.")


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


# --------------------------------------------------------------------------- drawing helpers
#
# Text from data files, models, uploads and people (prompts, responses, variants, notes, file names,
# model ids, error messages quoting them) is untrusted: drawn through markdown it could show a remote
# image (a beacon), a link or a heading. It goes out as text (st.code, st.text, dataframes), or through
# md_escape / md_code where a markdown string must hold it.

_MD_SPECIAL = re.compile(r"([\\`*\[\]<>#!|~$&])")       # images, links, HTML, headings, code, emphasis, tables, math
_MD_LINE_START = re.compile(r"(?m)^(\s*)(?:([-+=])|(\d+)([.)]))")  # list items, setext heading underlines, ordered lists
_MD_AUTOLINK = re.compile(r"(?i)(://|www\.)")                      # GFM turns bare URLs into links


def md_escape(text: Any) -> str:
    """``text`` as literal characters inside a markdown string (st.markdown, st.caption, messages,
    widget labels): no image, link, autolink, heading, list, HTML or math can come out of it.
    Underscores stay as they are (identifiers such as max_length read as written; at worst italics)."""
    text = _MD_SPECIAL.sub(r"\\\1", str(text))
    text = _MD_AUTOLINK.sub(lambda m: m.group(1).replace("/", "\\/").replace(".", "\\."), text)
    return _MD_LINE_START.sub(lambda m: m.group(1) + (f"\\{m.group(2)}" if m.group(2) else f"{m.group(3)}\\{m.group(4)}"), text)


def md_code(text: Any) -> str:
    """``text`` as an inline code span (drawn as typed, nothing inside renders) that no backtick or line
    break in it can end."""
    text = " ".join(str(text).splitlines())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def show_error(exc: BaseException | None, what: str = "") -> None:
    """A readable message for any error: the engine's message and fix, never a traceback."""
    if exc is None:
        return
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, DataError) or getattr(exc, "fix", ""):  # the engine's own errors: message and fix
        message = str(exc)
    elif not isinstance(exc, (ValueError, OSError)):
        message = f"{type(exc).__name__}: {message}"
    st.error(md_escape(f"{what + ': ' if what else ''}{message}"))


def show_scoring_skips() -> None:
    """Say how many pairs the scoring left out as longer than the scoring limit, if any."""
    skipped = skipped_by_scoring()
    if skipped:
        st.warning(f"{len(skipped)} pair(s) not scored: a response longer than the scoring limit of "
                   f"{settings().score_max_length} tokens (first: {md_code(skipped[0])}). Raise the limit under "
                   "Home > Models to score them.")


def show_trust_warning() -> None:
    """The standing warning while models may run code they ship."""
    if settings().trust_remote_code:
        st.warning("Remote code is allowed: a model or checkpoint loaded now may run Python code shipped with it. "
                   "Turn it off under Home > Models unless you trust every model in use.", icon=":material/warning:")


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
        fig.add_trace(go.Scatter(x=xs, y=list(rewards), mode="lines+markers", name=label,
                                 customdata=[html.escape(repr(p)) for p in pieces],  # plotly draws tags in hover text
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
