"""Reward explorer: any prompt and response, token by token. Type or load a text, see its per-token
reward trace, apply a perturbation and see the trace change, and put two RMs side by side."""
import pandas as pd
import streamlit as st

from pages._draw import md_code, md_escape, pair_label, show_error, trace_figure
from pages._keys import LAST_DECODED
from pages._loading import require_data, require_rm
from pages._routes import through_router
from pages._scoring import trace_of
from pages._settings import rm_exists, settings
from reform_engine.data import DataError, hh_text, prompt_from_text
from reform_engine.perturbations import PERTURBATIONS, align_tokens, perturb

NONE = "(none)"

through_router()
st.title("Reward explorer")
s = settings()
require_rm()
st.session_state.setdefault("explorer_prompt", "How do I make a good cup of tea?")
st.session_state.setdefault("explorer_response", "Boil fresh water, pour it over the tea bag, wait three minutes, "
                                                 "then remove the bag and add milk if you like.")


def load_text(prompt: str, response: str) -> None:
    st.session_state.explorer_prompt, st.session_state.explorer_response = prompt, response


with st.expander("Start from a pair of the data, or from the last decoded variant"):
    loaded = require_data(stop=False)
    if loaded is not None:
        pairs = {p.pair_id: p for p in loaded[1]}
        c1, c2, c3 = st.columns([4, 1, 1])
        pid = c1.selectbox("Pair", list(pairs), format_func=lambda i: pair_label(pairs[i]), key="explorer_pair")
        side = c2.radio("Side", ["chosen", "rejected"], key="explorer_side")
        pair = pairs[pid]
        c3.button("Load", key="explorer_load_pair", on_click=load_text,
                  args=(pair.prompt_text.strip(), pair.chosen if side == "chosen" else pair.rejected))
    last = st.session_state.get(LAST_DECODED)
    if last:
        v = last["variant"]
        st.button(f"Load the last decoded variant ({md_escape(v.pair_id)}, {v.direction})", key="explorer_load_variant",
                  on_click=load_text,
                  args=(hh_text(v.prompt).strip(), v.text))

prompt_text = st.text_area("Prompt (one user message, or HH turns 'Human: … Assistant: … Human: …')", key="explorer_prompt",
                           height=90)
response = st.text_area("Response", key="explorer_response", height=120)
# the picker has a row of its own: its options are a name and a description, cut off in a third of a row
name = st.selectbox("Perturbation", [NONE] + list(PERTURBATIONS), key="explorer_perturbation",
                    format_func=lambda n: n if n == NONE else f"{n} — {PERTURBATIONS[n].description}")
c1, c2 = st.columns([1, 3])
seed = c1.number_input("Seed", 0, 2**31 - 1, 0, key="explorer_seed")
compare_rm = c2.text_input("Compare with a second RM (checkpoint directory, optional)", value=s.compare_rm,
                           key="explorer_compare_rm").strip()

try:
    messages = prompt_from_text(prompt_text)
    if not response.strip():
        raise DataError("the response is empty.", fix="type a response to score.")
except DataError as exc:
    show_error(exc)
    st.stop()
perturbed = perturb(name, response, prompt_text, int(seed)) if name != NONE else None
if perturbed is not None:
    side = PERTURBATIONS[name].side
    st.caption(f"Perturbed response ({name}; in robustness tests applied to the {side} side, where a robust RM's preference "
               f"should not change):")
    st.code(perturbed, language=None, wrap_lines=True)

rms = [("Current RM", s.reward_model)]
if compare_rm:
    if rm_exists(compare_rm):
        rms.append(("Second RM", compare_rm))
    else:
        st.error(f"No reward model at {md_code(compare_rm)}: give a checkpoint directory written by train-rm.")
columns = st.columns(len(rms))
for col, (label, path) in zip(columns, rms):
    with col:
        st.markdown(f"**{label}**  \n{md_code(path)}")
        if require_rm(path, stop=False) is None:
            continue
        try:
            base = trace_of(messages, response, path)
            pert = trace_of(messages, perturbed, path) if perturbed is not None else None
        except DataError as exc:
            show_error(exc)
            continue
        m = st.columns(3)
        m[0].metric("Reward", f"{base['rewards'][-1]:+.3f}")
        if pert is not None:
            m[1].metric("Perturbed", f"{pert['rewards'][-1]:+.3f}", delta=f"{pert['rewards'][-1] - base['rewards'][-1]:+.3f}")
        m[2].metric("Tokens", len(base["rewards"]))
        if pert is None:
            st.plotly_chart(trace_figure([("original", base["pieces"], base["rewards"])], tick_labels=base["pieces"]),
                            key=f"explorer_trace_{label}")
        else:  # both against the columns of one token alignment, so a token's reward faces its perturbed self
            columns = align_tokens(base["pieces"], pert["pieces"])
            at_base = [c + 1 for c, (i, _) in enumerate(columns) if i is not None]   # x of each original token
            at_pert = [c + 1 for c, (_, j) in enumerate(columns) if j is not None]   # x of each perturbed token
            traces = [("original", base["pieces"], base["rewards"], at_base),
                      ("perturbed", pert["pieces"], pert["rewards"], at_pert)]
            ticks = [base["pieces"][i] if i is not None else "+" + pert["pieces"][j] for i, j in columns]
            st.plotly_chart(trace_figure(traces, tick_labels=ticks), key=f"explorer_trace_{label}")
            st.caption(f"Perturbed with {name}. The x axis is a common alignment of the two token sequences: a token "
                       "faces its perturbed self, and one only the perturbed response has faces a gap (labelled +token "
                       "when the axis names tokens). Hover a position for both tokens.")
        if base["prompt_truncated"]:
            st.caption("The prompt was cut from the left to fit the RM's length limit.")
        if base["slow_path"]:
            st.caption("A sequence-classification RM: every prefix was scored as its own text (slow path).")
        with st.expander("Token by token"):
            rewards = base["rewards"]
            if pert is None:
                frame = pd.DataFrame({"token": [repr(p) for p in base["pieces"]], "reward": rewards,
                                      "change": [rewards[0]] + [b - a for a, b in zip(rewards, rewards[1:])]})
            else:
                frame = pd.DataFrame([{"original": repr(base["pieces"][i]) if i is not None else "",
                                       "reward": rewards[i] if i is not None else None,
                                       "perturbed": repr(pert["pieces"][j]) if j is not None else "",
                                       "perturbed reward": pert["rewards"][j] if j is not None else None} for i, j in columns])
            st.dataframe(frame, hide_index=True, key=f"explorer_tokens_{label}",
                         column_config={c: st.column_config.NumberColumn(format="%.4f")
                                        for c in ("reward", "change", "perturbed reward")})
