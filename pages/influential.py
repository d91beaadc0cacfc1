"""Influential samples: the training pairs the RM finds easiest (lowest Bradley-Terry loss), or a random
or highest-loss share for comparison; their loss and margin distributions; the pairs to attack."""
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from pages._draw import md_escape
from pages._keys import TARGETS
from pages._routes import through_router
from pages._scoring import require_scored, show_scoring_skips
from reform_engine.influence import select_influential

KEPT = "influential_kept"   # the pick, kept across selections and page visits


def keep_pick() -> None:
    st.session_state[KEPT] = list(st.session_state.influential_pick)


through_router()
st.title("Influential samples")
scored = require_scored()
show_scoring_skips()

c1, c2, c3 = st.columns([2, 3, 1])
strategy = c1.radio("Selection", ["lowest_loss", "random", "highest_loss"], horizontal=True, key="influential_strategy",
                    format_func=lambda x: {"lowest_loss": "lowest loss (REFORM)", "random": "random",
                                           "highest_loss": "highest loss"}[x],
                    help="REFORM attacks the pairs the RM finds easiest; random and highest-loss are for comparison")
percent = c2.slider("p: share of the pairs, %", 1, 100, 5, key="influential_p")
seed = c3.number_input("Seed (random)", 0, 2**31 - 1, 0, key="influential_seed")
selected = select_influential(scored, percent / 100, strategy, int(seed))
chosen_ids = {x.pair.pair_id for x in selected}

all_losses = [x.loss for x in scored]
cols = st.columns(4)
cols[0].metric("Selected pairs", f"{len(selected)} of {len(scored)}")
cols[1].metric("Mean loss, selected", f"{sum(x.loss for x in selected) / len(selected):.3f}")
cols[2].metric("Mean loss, all", f"{sum(all_losses) / len(all_losses):.3f}")
cols[3].metric("Pairs the RM gets wrong", sum(x.r_chosen <= x.r_rejected for x in scored))

fig = make_subplots(rows=1, cols=2, subplot_titles=("Bradley-Terry loss −log σ(r+ − r−)", "Margin r+ − r−"))
for col, attr in ((1, "loss"), (2, "margin")):
    value = (lambda x: x.loss) if attr == "loss" else (lambda x: x.r_chosen - x.r_rejected)
    rest = [value(x) for x in scored if x.pair.pair_id not in chosen_ids]
    fig.add_trace(go.Histogram(x=rest, name="other pairs", marker_color="#9e9e9e", nbinsx=40, legendgroup="o",
                               showlegend=col == 1), row=1, col=col)
    fig.add_trace(go.Histogram(x=[value(x) for x in selected], name="selected", marker_color="#d32f2f", nbinsx=40,
                               legendgroup="s", showlegend=col == 1), row=1, col=col)
fig.update_layout(barmode="stack", height=320, margin=dict(l=10, r=10, t=40, b=10),
                  legend=dict(orientation="h", yanchor="bottom", y=1.1, x=0))
fig.update_yaxes(title_text="pairs", row=1, col=1)
st.plotly_chart(fig, key="influential_hist")

# r+, r− and loss first: they are what the table is for, and the texts after them are wide
frame = pd.DataFrame([{"r+": x.r_chosen, "r−": x.r_rejected, "loss": x.loss, "margin": x.r_chosen - x.r_rejected,
                       "rank": x.rank, "pair_id": x.pair.pair_id, "prompt": x.pair.prompt[-1]["content"],
                       "chosen": x.pair.chosen, "rejected": x.pair.rejected} for x in selected])
st.caption("Selected pairs, " + ("lowest rank first" if strategy != "random" else "in drawn order")
           + ". Tick rows to attack them, or pick them below.")
event = st.dataframe(frame, hide_index=True, key="influential_table", on_select="rerun", selection_mode="multi-row",
                     column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("r+", "r−", "margin", "loss")})
ticked = [frame["pair_id"][i] for i in (event.selection.rows if event is not None else [])]
# The pick lives in its own key, not only in the widget's: a pick outside the current selection (another
# strategy, a smaller p) stays picked and listed, so switching the strategy and back keeps it.
scored_ids = {x.pair.pair_id for x in scored}
if KEPT not in st.session_state:  # first visit: what was queued before, else the top three
    st.session_state[KEPT] = [p for p in st.session_state.get(TARGETS, []) if p in chosen_ids] or frame["pair_id"].tolist()[:3]
if ticked != st.session_state.get("influential_ticked", []):  # ticking rows in the table replaces the pick
    st.session_state.influential_ticked = ticked
    if ticked:
        st.session_state[KEPT] = ticked
kept = [p for p in st.session_state[KEPT] if p in scored_ids]  # other data: its pairs are gone
options = frame["pair_id"].tolist() + [p for p in kept if p not in chosen_ids]
st.session_state.influential_pick = kept
targets = st.multiselect("Pairs to attack", options=options, key="influential_pick", on_change=keep_pick,
                         help="the selected pairs, and any picked before from another selection")
if st.button("Attack these pairs in controlled decoding", type="primary", disabled=not targets, key="influential_send"):
    st.session_state[TARGETS] = list(targets)
    st.switch_page("pages/decoding.py")
if st.session_state.get(TARGETS):
    st.caption(f"Queued for decoding: {md_escape(', '.join(st.session_state[TARGETS]))}")
