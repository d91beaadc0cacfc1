"""Recipe check: cross-validate a reward-model recipe before trusting anything built on it. A crossval
job trains the recipe on K-1 random folds of the data and scores it on the held-out one, K times, beside
the length rules and a linear probe on the frozen backbone; this page starts one and draws its result:
each fold's accuracy as a dot, the pooled out-of-fold accuracy as a bar with its 95% bootstrap interval."""
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages._draw import md_escape, show_error
from pages._jobs import job_results, start_from_page
from pages._routes import store_page
from reform_engine.crossval import REFERENCES, CrossValConfig, compare_runs, read_report
from reform_engine.reward_model import FINETUNE_MODES, RewardModelSpec
from reform_engine.training import TrainRewardConfig

FLASH_KEY = "crossval_flash"
DEFAULT = TrainRewardConfig()
COLORS = dict(zip((label for _, label in REFERENCES), ("#1565c0", "#ef6c00", "#9e9e9e", "#616161")))


def accuracy_figure(report: dict) -> go.Figure:
    """One bar per model: pooled out-of-fold accuracy with its interval; each fold a dot on it."""
    pooled, folds = pd.DataFrame(report["pooled"]), pd.DataFrame(report["folds"])
    fig = go.Figure(go.Bar(
        x=pooled["model"], y=pooled["value"], marker_color=[COLORS.get(m) for m in pooled["model"]], name="pooled",
        error_y=dict(type="data", symmetric=False, array=(pooled["high"] - pooled["value"]).tolist(),
                     arrayminus=(pooled["value"] - pooled["low"]).tolist()),
        customdata=pooled[["low", "high", "n", "mean", "std"]].to_numpy(),
        hovertemplate="pooled %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}], n = %{customdata[2]}<br>"
                      "over folds %{customdata[3]:.3f} ± %{customdata[4]:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=folds["model"], y=folds["accuracy"], mode="markers", name="each fold",
                             marker=dict(color="black", size=7, symbol="circle-open"),
                             customdata=folds[["fold", "n"]].to_numpy(),
                             hovertemplate="fold %{customdata[0]}: %{y:.3f} on %{customdata[1]} pairs<extra></extra>"))
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=30, b=10), yaxis_tickformat=".0%", showlegend=True,
                      legend=dict(orientation="h", y=-0.15), yaxis_range=[0.3, 1.0])
    return fig


def draw_comparison(report: dict) -> None:
    """Two recipes on the same held-out pairs: each one's pooled accuracy and the paired difference."""
    rows = [{"recipe": name, "accuracy": report[name].estimate, "low": report[name].low, "high": report[name].high,
             "pairs": report[name].n} for name in ("default", "candidate")]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="crossval_compare_table",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("accuracy", "low", "high")})
    d = report["difference"]
    changed = "; ".join(f"{k.removeprefix('recipe.')}: {a} → {b}" for k, (a, b) in report["changed"].items()) or "nothing"
    st.markdown(f"**Candidate − default: {d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]** on the {d.n} held-out pairs both "
                f"runs scored (paired 95% bootstrap). Changed: {md_escape(changed)}.")
    st.caption(("" if report["complete"] else "Not every fold of both runs has been scored: this covers the folds done so far. ")
               + "Fix the rule before the runs (e.g. replace the default only if the interval is above zero). A recipe "
               "picked on these folds is optimistic by the picking: only pairs no run has seen can say by how much.")


def draw_report(report: dict, job_id: int) -> None:
    st.plotly_chart(accuracy_figure(report), key=f"crossval_figure_{job_id}")
    table = pd.DataFrame(report["folds"]).pivot(index="fold", columns="model", values="accuracy")
    table["held-out pairs"] = pd.DataFrame(report["folds"]).groupby("fold")["n"].first()
    st.dataframe(table.reset_index(), hide_index=True, key=f"crossval_folds_{job_id}",
                 column_config={label: st.column_config.NumberColumn(format="%.3f") for _, label in REFERENCES})
    diff = report.get("rm_minus_probe")
    if diff:
        st.caption(f"RM minus probe on the same {diff['n']} pairs (paired bootstrap): {diff['estimate']:+.3f} "
                   f"[{diff['low']:+.3f}, {diff['high']:+.3f}].")
    st.caption(f"Folds drawn with seed {report['fold_seed']}; the recipe's seed {report['seed']}; intervals: 95% percentile "
               "bootstrap over every held-out pair of the folds done."
               + ("" if report["complete"] else " Not every fold has run yet: start the job again with the other folds."))


s, store = store_page("Recipe check", FLASH_KEY)
st.caption("Is the reward-model recipe better than what the frozen model already knows? Each of K random folds of the data is "
           "held out once: the recipe trains on the others and is scored on it, beside the length rules and a linear probe on the "
           "frozen backbone's features, on the same pairs. One contiguous split can overstate an RM; K folds do not depend on "
           "where the file happens to be easy.")

with st.form("crossval_form"):
    c = st.columns(4)
    data = c[0].text_input("Data", value=s.data, key="crossval_data").strip()
    folds = c[1].number_input("Folds (K)", 2, 20, 5, key="crossval_folds")
    fold_seed = c[2].number_input("Fold draw (seed)", 0, 10_000, 0, key="crossval_fold_seed",
                                  help="fix it before the first run; never pick it by its results")
    only = c[3].text_input("Only folds", "", key="crossval_only", help="e.g. '0,1' to spread a long run over sessions; '' = all")
    c = st.columns(5)
    finetune = c[0].selectbox("Fine-tuning", FINETUNE_MODES, key="crossval_finetune")
    lora_layers = c[1].number_input("Top layers trained (LoRA or top)", 1, 64, DEFAULT.model.lora_layers, key="crossval_lora_layers")
    max_length = c[2].number_input("Max length", 64, 4096, DEFAULT.model.max_length, step=32, key="crossval_max_length")
    epochs = c[3].number_input("Epochs", 1, 20, DEFAULT.epochs, key="crossval_epochs")
    lr = c[4].number_input("Learning rate", 1e-6, 1e-2, DEFAULT.lr, format="%.1e", key="crossval_lr")
    probe = st.toggle("Linear probe on frozen features (one extra pass over the data)", True, key="crossval_probe")
    if st.form_submit_button("Cross-validate (background job)", type="primary"):
        try:
            recipe = TrainRewardConfig(data=data, epochs=int(epochs), lr=float(lr),
                                       model=RewardModelSpec(base_model=s.policy, finetune=finetune, lora_layers=int(lora_layers),
                                                             max_length=int(max_length)))
            config = CrossValConfig(recipe=recipe, folds=int(folds), fold_seed=int(fold_seed), only_folds=only, probe=probe,
                                    runtime=s.runtime())
            start_from_page(store, "crossval", config, FLASH_KEY, picker_key="crossval_job",
                            message=lambda i: f"Started crossval job #{i}: the result appears below when it ends.")
        except ValueError as exc:
            show_error(exc, "Not started")

job_results(store, "crossval", title="Result", label="Crossval job", idle="No cross-validation is running.",
            read=read_report, draw=draw_report)

jobs = store.list_jobs("crossval")
if len(jobs) >= 2:
    st.subheader("Compare two recipes")
    ids = [int(i) for i in jobs["id"]]
    run_dir = dict(zip(ids, jobs["run_dir"]))
    c = st.columns(2)
    candidate = c[0].selectbox("Candidate", ids, index=0, key="crossval_candidate", format_func=lambda i: f"#{i} crossval")
    default = c[1].selectbox("Default", ids, index=1, key="crossval_default", format_func=lambda i: f"#{i} crossval")
    try:
        draw_comparison(compare_runs(run_dir[candidate], run_dir[default]))
    except ValueError as exc:
        show_error(exc, "Cannot compare these runs")
