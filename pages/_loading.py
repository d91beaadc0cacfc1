"""The models and data every page works on, loaded in background threads behind ``st.cache_resource`` (one
copy per server process), so no page blocks: a page whose input is not ready shows its progress and
draws again when it is."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import streamlit as st

from pages._cpu import cpu_work
from pages._draw import WAIT, md_code, md_escape, show_error
from pages._settings import file_stamp, rm_exists, settings
from reform_engine.background import BackgroundTask
from reform_engine.data import ColumnError, DataError
from reform_engine.eta import progress_text

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
        from reform_engine.models import DEFAULT_MODEL, check_model_name, converted_default_dir, load_causal_lm, load_tokenizer

        check_model_name(name)  # a mistyped id fails now, not after the other model's load and the imports
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
def cached_rm_task(path: str, stamp: int, device: str, trust_remote_code: bool) -> BackgroundTask:
    def load(report):
        from reform_engine.models import DEFAULT_MODEL, check_model_name, converted_default_dir
        from reform_engine.reward_model import SPEC_FILE, RewardModelSpec, load_reward_model

        if not (Path(path).expanduser() / SPEC_FILE).is_file():
            check_model_name(path)  # a sequence-classification model id: refused now if it cannot be loaded
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
def cached_data_task(source: str, rows: str, stamp: int) -> BackgroundTask:
    def load(report):
        from reform_engine.data import select_rows

        report(0, None, f"reading {source}")
        data = load_data(source)
        pairs = select_rows(data.pairs, rows)
        if not pairs:
            raise DataError(f"no pairs in rows {rows!r} of {data.report.rows_read}.", source=source, fix="widen or clear the rows.")
        return data, pairs
    return BackgroundTask(load, "data")


COLUMN_FIX = ("map the file's columns to prompt, chosen and rejected under 'Column mapping' (beside the file, on Home "
              "or the Data page), then use the data again.")


def load_data(source: str, column_map: dict[str, str] | None = None):
    """The engine's loader as the app calls it (invalid rows skipped) -> PreferenceData. A column error's fix
    points at the app's column mapping, not at ``column_map``."""
    from reform_engine.data import load_preferences

    try:
        return load_preferences(source, skip_invalid=True, column_map=column_map or None)
    except ColumnError as exc:
        raise DataError(exc.message, source=exc.source, row=exc.row, fix=COLUMN_FIX) from exc


def validate_data(source: str, rows: str, column_map: dict[str, str], project_dir: str) -> str:
    """Check new data before it becomes the data in use: load it with the engine's loader and select its
    rows -> the source to switch to (with a column mapping, a copy with the columns renamed, under the
    project's uploads, so pages and jobs read it with no map). Raises DataError saying what to fix; the
    data in use is left as it was."""
    from reform_engine.data import save_mapped, select_rows

    if not source.strip():
        raise DataError("no path or id given.", fix="type a local file path or a hub dataset id.")
    data = load_data(source, column_map)
    if not select_rows(data.pairs, rows):
        raise DataError(f"no valid pairs in rows {rows!r} of its {data.report.rows_read} rows.", source=source,
                        fix="widen or clear the rows.")
    return str(save_mapped(source, column_map, Path(project_dir) / "uploads")) if column_map else source


# the cached tasks' arguments for the current settings (also what a Retry button clears)
def _policy_args() -> tuple:
    s = settings()
    return s.policy, s.device, s.trust_remote_code


def rm_args(path: str | None = None) -> tuple:
    s = settings()
    path = s.reward_model if path is None else path
    return path, file_stamp(path), s.device, s.trust_remote_code


def data_args() -> tuple:
    s = settings()
    return s.data, s.rows, file_stamp(s.data)


def policy_task() -> BackgroundTask:
    return _policy_task(*_policy_args())


def rm_task(path: str | None = None) -> BackgroundTask:
    return cached_rm_task(*rm_args(path))


def data_task() -> BackgroundTask:
    return cached_data_task(*data_args())


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
    text = f"{WAIT} {md_escape(label)}: {md_escape(progress_text(task.message, remaining=task.remaining))} ({task.elapsed:.0f} s)"
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
    return require(rm_task(path), f"Reward model {path}", retry=(cached_rm_task, rm_args(path)), stop=stop)


def require_data(stop: bool = True):
    """-> (PreferenceData, the pairs in the selected rows). Its errors name the file themselves, and a retry
    would read the same file again (a replaced file is read anew anyway), so there is no Retry button."""
    return require(data_task(), "Data", stop=stop)


@st.cache_resource(show_spinner=False)
def _decoder(policy: str, rm_path: str, rm_stamp: int, device: str, trust_remote_code: bool):
    from reform_engine.decoding import ControlledDecoder

    model, tokenizer = _policy_task(policy, device, trust_remote_code).result
    return ControlledDecoder(model, tokenizer, cached_rm_task(rm_path, rm_stamp, device, trust_remote_code).result)


class _SharingDecoder:
    """The controlled decoder with each decode run as claimed CPU work (pages._cpu.cpu_work), so a job
    running meanwhile leaves the page a core."""

    def __init__(self, decoder):
        self._decoder = decoder

    def __getattr__(self, name: str):
        return getattr(self._decoder, name)

    def decode(self, *args, **kwargs):
        with cpu_work():  # the page decodes in this thread
            return self._decoder.decode(*args, **kwargs)


def require_decoder():
    """The controlled decoder on the current policy and RM (both loaded first)."""
    require_policy()
    require_rm()
    return _SharingDecoder(_decoder(settings().policy, *rm_args()))
