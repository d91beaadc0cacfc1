"""REFORM vs Adv-RM: pick a finished pipeline run (REFORM) and a finished adv-rounds run (Adv-RM) on the
same base RM, start a compare job (it judges both methods' samples alike, retrains both RMs on the same
number of added pairs, and runs the cross-attacks), and read its table: success per sample and per
prompt, confirmed failures per CPU-minute, diversity, the retrained RMs' accuracy and drops, and the
cross-attacks, every rate with its 95% bootstrap interval as an error bar, and the retrained RMs' spurious
indicators (extreme-negative share, reward-length correlation)."""
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages._draw import show_error
from pages._jobs import job_results, start_from_page
from pages._routes import store_page
from reform_engine.compare import CompareConfig, comparable, read_table

FLASH_KEY = "compare_flash"
COLORS = {"REFORM": "#1565c0", "Adv-RM": "#c62828", "base": "#757575"}


def error_bars(frame: pd.DataFrame, x: str, group: str, title: str, *, percent: bool = True, height: int = 340) -> go.Figure:
    """Bars of ``value`` by ``x``, one colour per ``group``, each with its interval [low, high] as an error bar."""
    fig = go.Figure()
    for name, part in frame.groupby(group, sort=False):
        fig.add_trace(go.Bar(x=part[x], y=part["value"], name=str(name), marker_color=COLORS.get(str(name)),
                             error_y=dict(type="data", symmetric=False, array=(part["high"] - part["value"]).tolist(),
                                          arrayminus=(part["value"] - part["low"]).tolist()),
                             customdata=part[["low", "high", "n"]].to_numpy(),
                             hovertemplate="%{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}], n = %{customdata[2]}"
                                           f"<extra>{name}</extra>"))
    fig.update_layout(barmode="group", title=title, height=height, margin=dict(l=10, r=10, t=40, b=10),
                      yaxis_tickformat=".0%" if percent else None)
    return fig


def draw_table(table: dict, job_id: int) -> None:
    checks = pd.DataFrame(table["checks"])
    if not checks.empty:
        checks.insert(0, "ok", checks.pop("ok"))  # a tick box: an emoji here drew as a box without an emoji font
        st.dataframe(checks, hide_index=True, key=f"compare_checks_{job_id}",
                     column_config={"ok": st.column_config.CheckboxColumn("ok")})
    st.caption(f"Intervals: 95% percentile bootstrap, {table['n_boot']} resamples, seed {table['seed']}; differences of two "
               "methods on different samples resample each side, of two RMs on the same pairs resample the pairs once (paired).")

    st.markdown("**Success**: the target RM prefers the sample to y+, and the judge RM or a rule confirms it is bad")
    success = pd.DataFrame(table["success"])
    methods = success[~success["method"].str.contains("−")].copy()
    methods["measured"] = methods["unit"] + "s, " + methods["prompts"] + " prompts"
    st.plotly_chart(error_bars(methods, "measured", "method", "Confirmed failures: share of samples, of prompts"),
                    key=f"compare_success_{job_id}")
    diffs = success[success["method"].str.contains("−")]
    if not diffs.empty:
        st.dataframe(diffs[["method", "unit", "prompts", "value", "low", "high", "n"]], hide_index=True, key=f"compare_diffs_{job_id}")
    same = pd.DataFrame(table.get("same_prompts") or [])   # comparisons from before it existed have none
    if not same.empty:
        st.markdown(f"**On the same prompts**: REFORM's decoding of the {table.get('same_prompts_n', 0)} prompts the attack "
                    "attacked, beside Adv-RM's samples there; the per-prompt difference is paired over those prompts")
        both = same[~same["method"].str.contains("−")].copy()
        both["measured"] = both["unit"] + "s, " + both["prompts"] + " prompts"
        st.plotly_chart(error_bars(both, "measured", "method", "Confirmed failures on the attack's prompts"),
                        key=f"compare_same_{job_id}")
        st.dataframe(same[same["method"].str.contains("−")][["method", "unit", "prompts", "value", "low", "high", "n"]],
                     hide_index=True, key=f"compare_same_diffs_{job_id}")

    c1, c2 = st.columns(2)
    efficiency = pd.DataFrame(table["efficiency"])
    c1.plotly_chart(error_bars(efficiency.assign(x="per CPU-minute"), "x", "method", "Confirmed failures per CPU-minute (RL included)",
                               percent=False), key=f"compare_efficiency_{job_id}")
    c1.dataframe(efficiency[["method", "confirmed_failures", "cpu_minutes"]], hide_index=True, key=f"compare_cpu_{job_id}")
    diversity = pd.DataFrame(table["diversity"])
    diversity["rules"] = [", ".join(f"{r} {n}" for r, n in rules.items()) for rules in diversity["rules"]]
    c2.markdown("**Diversity of the confirmed failures**")
    c2.dataframe(diversity, hide_index=True, key=f"compare_diversity_{job_id}",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("distinct_1", "distinct_2", "trigram_overlap")})

    retrained = pd.DataFrame(table["retrained"])
    if not retrained.empty:
        pairs = int(retrained.loc[retrained["model"] != "base", "added_pairs"].max())
        st.markdown(f"**Retrained on the same number of added pairs ({pairs} each), on the same held-out pairs**")
        c1, c2 = st.columns([1, 3])
        c1.plotly_chart(error_bars(retrained[retrained["metric"] == "clean accuracy"], "metric", "model", "Clean accuracy"),
                        key=f"compare_accuracy_{job_id}")
        drops = retrained[retrained["metric"] != "clean accuracy"]
        c2.plotly_chart(error_bars(drops, "metric", "model", "Win-rate drop: the mean and each perturbation (lower is more robust)"),
                        key=f"compare_drops_{job_id}")
    spurious = pd.DataFrame(table.get("spurious") or [])   # comparisons from before the indicators were kept have none
    if not spurious.empty:
        st.markdown("**Spurious indicators** of each RM's rewards on the clean held-out pairs: the share of extreme-negative "
                    "rewards (below the mean − 2 std) and the correlation of reward with length, capitals and repetition")
        st.dataframe(spurious, hide_index=True, key=f"compare_spurious_{job_id}", column_config={
            "added_pairs": st.column_config.NumberColumn("added pairs"),
            "extreme_negative_share": st.column_config.NumberColumn("extreme-negative share", format="%.3f"),
            **{c: st.column_config.NumberColumn(f"r(reward, {c.split('_')[0]})", format="%+.3f")
               for c in ("length_corr", "capital_corr", "repetition_corr")}})
    paired = pd.DataFrame(table["paired"])
    if not paired.empty:
        st.plotly_chart(error_bars(paired, "metric", "difference", "Adv-RM's RM minus REFORM's, pair by pair (paired bootstrap)",
                                   height=300), key=f"compare_paired_{job_id}")
    cross = pd.DataFrame(table["cross"])
    direct = cross[~cross["target"].str.contains("−")]
    st.plotly_chart(error_bars(direct, "attacker", "target", "Cross-attacks: confirmed failures per sample, by the RM attacked"),
                    key=f"compare_cross_{job_id}")
    if "target_prefers" in direct.columns:  # comparisons from before it was kept have none
        st.caption("Beside each confirmed rate: how often the attacked RM prefers the sample to y+ at all. High there and low "
                   "confirmed means a hack the judge and rules do not see, not an RM that resists.")
        st.dataframe(direct[["attacker", "target", "value", "target_prefers", "target_prefers_low", "target_prefers_high", "n"]],
                     hide_index=True, key=f"compare_cross_prefers_{job_id}", column_config={
                         "value": st.column_config.NumberColumn("confirmed", format="%.3f"),
                         "target_prefers": st.column_config.NumberColumn("RM prefers it to y+", format="%.3f"),
                         "target_prefers_low": st.column_config.NumberColumn("low", format="%.3f"),
                         "target_prefers_high": st.column_config.NumberColumn("high", format="%.3f")})
    if len(direct) < len(cross):
        st.dataframe(cross[cross["target"].str.contains("−")][["attacker", "target", "value", "low", "high", "n"]], hide_index=True,
                     key=f"compare_cross_diffs_{job_id}")


def finished_runs(store, kind: str) -> dict[int, tuple[str, str]]:
    """Job id -> (run directory, state) of the ``kind`` runs that can be compared: succeeded, or still running (or
    stopped) with the stages the comparison reads finished, as a long pipeline's later arms may take hours more."""
    jobs = store.list_jobs(kind)
    return {int(i): (d, state) for i, d, state in zip(jobs["id"], jobs["run_dir"], jobs["state"])
            if state == "succeeded" or comparable(d, kind)}


def run_label(job_id: int, kind: str, state: str) -> str:
    return f"#{job_id} {kind}" + ("" if state == "succeeded" else f" ({state}; the stages compared have finished)")


s, store = store_page("REFORM vs Adv-RM", FLASH_KEY)
st.caption("Both methods on the same base RM: REFORM's controlled decoding (a pipeline run) and Adv-RM's RL attack (an adv-rounds run "
           "whose target is the pipeline's base). One criterion of success for both; their RMs retrained on the same number of "
           "added pairs; each attacks the RM the other hardened.")

pipelines, rounds = finished_runs(store, "pipeline"), finished_runs(store, "adv-rounds")
if not pipelines or not rounds:
    st.info("Needs a pipeline run (Retrain & evaluate) whose influence, base robustness and lowest-loss variants have finished, "
            "and an adv-rounds run (Adversarial attack) on the same base RM whose base robustness and first attack have.")
else:
    c = st.columns(2)
    p = c[0].selectbox("REFORM: pipeline run", list(pipelines), key="compare_pipeline",
                       format_func=lambda i: run_label(i, "pipeline", pipelines[i][1]))
    a = c[1].selectbox("Adv-RM: adv-rounds run", list(rounds), key="compare_rounds",
                       format_func=lambda i: run_label(i, "adv-rounds", rounds[i][1]))
    c = st.columns(2)  # the toggles on a row of their own: in a sixth of a row their labels were cut
    equal_pairs = c[0].toggle("Retrain on equal pairs", True, key="compare_equal_pairs")
    cross_attacks = c[1].toggle("Cross-attacks", True, key="compare_cross_attacks", disabled=not equal_pairs)
    if st.button("Compare (background job)", type="primary", key="compare_start"):
        try:
            config = CompareConfig(pipelines[p][0], rounds[a][0], equal_pairs=equal_pairs, cross_attacks=cross_attacks and equal_pairs,
                                   runtime=s.runtime())
            start_from_page(store, "compare", config, FLASH_KEY, picker_key="compare_job",
                            message=lambda i: f"Started compare job #{i}: the table appears below when it ends.")
        except ValueError as exc:
            show_error(exc, "Not started")

job_results(store, "compare", title="Comparison", label="Compare job", idle="No comparison is running.", read=read_table,
            draw=draw_table)
