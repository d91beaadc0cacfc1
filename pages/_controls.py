"""Controls shared by the pages that start work: the decoding knobs, drawn one way everywhere, with the
limits, defaults and help of ``DecodingConfig`` (decoding.LIMITS), not numbers of the page's own; and
form values that survive leaving the page."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import streamlit as st

from reform_engine.decoding import LIMITS, DecodingConfig
from reform_engine.inversions import VerdictConfig
from reform_engine.personas import PERSONAS, custom
from reform_engine.runtime import Runtime

SEED_MAX = 2**31 - 1
_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(DecodingConfig)}


def decoding_controls(key: str, direction: str = "lower", *, seed: bool = True, persona: bool = False) -> tuple[DecodingConfig, int]:
    """k, α, temperature and max new tokens (and the sampling seed, unless ``seed`` is False) in one
    row of sliders, and with ``persona`` the policy's persona below them -> (the DecodingConfig, the
    seed). Widget keys: ``{key}_k``, ``{key}_alpha``, ``{key}_temperature``, ``{key}_max_tokens``,
    ``{key}_seed``, and persona_control's under ``{key}_persona``."""
    default = DecodingConfig()
    c = st.columns(5 if seed else 4)
    k = c[0].slider("k candidates", *LIMITS["k"], default.k, key=f"{key}_k", help=_HELP["k"])
    alpha = c[1].slider("α fluency weight", *LIMITS["alpha"], default.alpha, 0.1, key=f"{key}_alpha", help=_HELP["alpha"])
    temperature = c[2].slider("temperature (0 = greedy)", *LIMITS["temperature"], default.temperature, 0.05,
                              key=f"{key}_temperature", help=_HELP["temperature"])
    max_new_tokens = c[3].slider("max new tokens", *LIMITS["max_new_tokens"], default.max_new_tokens, key=f"{key}_max_tokens",
                                 help=_HELP["max_new_tokens"])
    chosen_seed = c[4].number_input("seed", 0, SEED_MAX, Runtime().seed, key=f"{key}_seed",
                                    help="the sampler's seed (with temperature > 0)") if seed else Runtime().seed
    chosen_persona = persona_control(f"{key}_persona", default.persona) if persona else default.persona
    config = DecodingConfig(k=int(k), alpha=float(alpha), temperature=float(temperature), max_new_tokens=int(max_new_tokens),
                            direction=direction, persona=chosen_persona)
    return config, int(chosen_seed)


def persona_control(key: str, default: str, label: str = "Policy persona", column=None) -> str:
    """The policy's persona (personas.py): a named one, or 'custom' with a text box for its system
    prompt -> the persona as DecodingConfig takes it. The RM never sees it. Widget keys: ``key`` and
    ``{key}_text``."""
    where = column or st
    names = [*PERSONAS, "custom"]
    name = where.selectbox(label, names, names.index(default), key=key, help=_HELP["persona"])
    if name != "custom":
        return name
    text = where.text_area("Persona's system prompt (the policy reads it before the prompt; the RM does not)", key=f"{key}_text",
                           height=80, placeholder="You are ...")
    if not text.strip():
        where.caption("Write the persona's system prompt: until then the policy reads none.")
        return "none"
    return custom(text)


def fluency_control(key: str, column=None) -> VerdictConfig:
    """The "not fluent" limit (VerdictConfig.max_perplexity_ratio, its default and help) -> the
    VerdictConfig. Widget key: ``{key}_fluency``."""
    field = next(f for f in dataclasses.fields(VerdictConfig) if f.name == "max_perplexity_ratio")
    ratio = (column or st).number_input("Not fluent above × the plain policy's perplexity (0 = off)", 0.0, 1000.0,
                                        VerdictConfig().max_perplexity_ratio, 1.0, key=f"{key}_fluency",
                                        help=field.metadata["help"])
    return VerdictConfig(max_perplexity_ratio=float(ratio) if ratio >= 1 else 0.0)


def column_mapping(key: str) -> dict[str, str]:
    """The file's names for our columns, in a collapsed row of three fields -> {'prompt': their name, ...}
    ('' = the file names it as we do); ``data.column_map_of`` turns them into the loader's column_map.
    Widget keys: ``{key}_column_prompt``, ``{key}_column_chosen``, ``{key}_column_rejected``."""
    from reform_engine.data import OUR_COLUMNS

    with st.expander("Column mapping (when the file names its columns differently)"):
        c = st.columns(len(OUR_COLUMNS))
        return {ours: c[i].text_input(f"Column holding {ours}", key=f"{key}_column_{ours}", placeholder=ours,
                                      help=f"the file's name for the {ours} column; empty = it is called {ours}")
                for i, ours in enumerate(OUR_COLUMNS)}


def keep_across_pages(keys: Iterable[str], store: str, context: Any = None) -> None:
    """Let a page's widgets keep their values when the user leaves the page and comes back. Streamlit
    forgets the value of a widget a run does not draw (every run of another page); a copy under
    ``store`` puts it back on the next visit. The copies are dropped when ``context`` (e.g. the settings
    in use) changes, so the defaults follow a new model or data set. Call before the widgets are drawn."""
    if st.session_state.get(f"{store}_context") != context:
        st.session_state[f"{store}_context"] = context
        st.session_state[store] = {}
    kept = st.session_state.setdefault(store, {})
    for key in keys:
        if key in st.session_state:
            kept[key] = st.session_state[key]
        elif key in kept:
            st.session_state[key] = kept[key]
