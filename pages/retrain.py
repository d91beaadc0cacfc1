"""Retrain & evaluate: retrain the reward model on the approved pairs (from scratch with the base's
recipe, or as a fine-tune of the base) and measure base and retrained under the perturbations, or run
the whole REFORM loop with its ablations, or best-of-N picked by two RMs and judged by a third; every run is
a background job with live progress. Results: clean accuracy and win-rate drop per perturbation, base vs
retrained (vs ablations), one report per run (a table per arm, reports.arm_table), and the run history."""
import dataclasses
from pathlib import Path

import pandas as pd
import streamlit as st

from pages._controls import decoding_controls, keep_across_pages, persona_control
from pages._draw import accuracy_figure, drop_figure, md_code, short, show_error
from pages._jobs import history, live_jobs, start_from_page
from pages._project import project_store
from pages._routes import store_page
from pages._settings import rm_exists, settings
from reform_engine.appropriateness import SOURCES, AppropriatenessConfig
from reform_engine.curation import export_approved
from reform_engine.data import DEMO_PATH, overlapping_rows, same_source
from reform_engine.inversions import GenerateVariantsConfig
from reform_engine.personas import DEFAULT_PERSONAS
from reform_engine.perturbations import PERTURBATIONS
from reform_engine.pipeline import DEMO_SPLIT, PipelineConfig
from reform_engine.best_of_n import BestOfNConfig
from reform_engine.reports import (arm_cells, arm_markdown, arm_table, best_of_n_frame, best_of_n_results, finished_result_jobs,
                                   results_frames, variants_markdown, variants_table, versus_cells, versus_markdown, versus_table)
from reform_engine.retrain import RetrainConfig, base_training_config, held_out_rows
from reform_engine.reward_model import RewardModelSpec
from reform_engine.robustness import RobustnessConfig
from reform_engine.stages import RETRAIN_MODES, RetrainRecipe
from reform_engine.training import TrainRewardConfig

FLASH_KEY = "retrain_flash"
FORM_KEYS = [f"retrain_{k}" for k in ("base", "mode", "data", "train_rows", "ft_epochs", "ft_lr", "replay", "eval_data",
                                      "eval_rows", "perturbations")] + \
            [f"pipeline_{k}" for k in ("train_rows", "eval_rows", "use_base", "mode", "p", "epochs", "k", "alpha", "temperature",
                                       "max_tokens", "ablate_random", "ablate_no_aug", "use_approved", "perturbations",
                                       "per_pair", "lower_persona", "lower_persona_text", "raise_persona", "raise_persona_text",
                                       "appropriateness", "appropriateness_judge", "filter_inappropriate", "ablate_highest_loss",
                                       "ablate_mode", "ablate_appropriateness", "ablate_equal", "ablate_ordered", "bon_judge", "bon_prompts", "bon_n")] + \
            [f"robustness_{k}" for k in ("rm", "data", "rows", "perturbations")] + \
            [f"bon_{k}" for k in ("rm_a", "rm_b", "judge", "data", "rows", "prompts", "n")] + ["retrain_compare"]
RESULT_KINDS = ["retrain", "pipeline", "robustness", "best-of-n"]
ARM_KINDS = ("retrain", "pipeline", "adv-rounds")   # runs with a report.json: one row per arm


def start(kind: str, config, what: str) -> None:
    start_from_page(project_store(), kind, config, FLASH_KEY,
                    message=lambda i: f"Started job #{i}: {what}. Progress below; results appear when it ends.")


def interval_text(summary, column: str) -> list[str]:
    """'[low, high]' of each row's 95% interval of ``column`` ('' where the run has none)."""
    return ["" if lo is None or hi is None or lo != lo or hi != hi else f"[{lo:.3f}, {hi:.3f}]"
            for lo, hi in zip(summary[f"{column}_low"], summary[f"{column}_high"])]


def help_of(cls, name: str) -> str:
    """A config field's help (its one home), for a widget's tooltip."""
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def perturbation_picker(key: str) -> str:
    names = st.multiselect("Perturbations", list(PERTURBATIONS), default=list(PERTURBATIONS), key=key,
                           help="; ".join(f"{n}: {p.description} ({p.side})" for n, p in PERTURBATIONS.items()))
    return ",".join(names)


s, store = store_page("Retrain & evaluate", FLASH_KEY)
keep_across_pages(FORM_KEYS, "retrain_form", context=s)  # the forms are as they were left, until the settings change

# ------------------------------------------------------------------ start a run
tab_retrain, tab_pipeline, tab_eval, tab_bon = st.tabs(["Retrain on the approved pairs", "The whole loop (pipeline)",
                                                        "Evaluate one checkpoint", "Best-of-N: RM A vs RM B"])
with tab_retrain:
    n_approved = len(store.approved_pairs())
    base_rm = st.text_input("Base reward model (checkpoint directory)", value=s.reward_model, key="retrain_base").strip()
    recipe = base_training_config(base_rm) if base_rm else None
    c = st.columns(3)
    c[0].metric("Approved pairs", n_approved)
    mode = c[1].radio("Retrain", list(RETRAIN_MODES), key="retrain_mode", horizontal=True,
                      format_func={"scratch": "from scratch (the base's recipe)", "finetune": "fine-tune the base"}.get)
    if recipe is not None:
        c[2].caption(f"The base was trained on {md_code(short(recipe.data, 50))} rows {md_code(recipe.train_rows or 'all')}: "
                     f"{recipe.epochs} epoch(s), lr {recipe.lr:g}, batch {recipe.batch_size}, {recipe.model.finetune}, "
                     f"seed {recipe.runtime.seed}. "
                     "Retraining uses the same pairs plus the approved ones.")
        data, train_rows = "", recipe.train_rows
    else:
        c[2].caption("This checkpoint was not trained here, so its training pairs are unknown: give them.")
        data = st.text_input("Its training data", value=s.data, key="retrain_data").strip()
        train_rows = st.text_input("Its training rows ('start:end', empty = all)", value=s.rows, key="retrain_train_rows").strip()
    plain = RetrainRecipe()
    if mode == "finetune":
        c = st.columns(3)
        ft_epochs = c[0].number_input("Fine-tune epochs", 1, 100, plain.finetune_epochs, key="retrain_ft_epochs")
        ft_lr = c[1].number_input("Fine-tune lr (0 = the base's)", 0.0, 1.0, plain.finetune_lr, step=1e-5, format="%.1e",
                                  key="retrain_ft_lr")
        replay = c[2].number_input("Replay: original pairs sampled (0 = all)", 0, 10_000_000, plain.replay, key="retrain_replay")
    else:
        ft_epochs, ft_lr, replay = plain.finetune_epochs, plain.finetune_lr, plain.replay
    c = st.columns(2)
    eval_data = c[0].text_input("Held-out data", value=(recipe.data if recipe else data) or s.data, key="retrain_eval_data").strip()
    eval_rows = c[1].text_input("Held-out rows ('start:end')", value=held_out_rows(train_rows), key="retrain_eval_rows").strip()
    try:
        shared = overlapping_rows(eval_rows, train_rows) if same_source(eval_data, recipe.data if recipe else data or s.data) else ""
    except ValueError:  # a malformed range: refused with its fix when the run is started
        shared = ""
    if shared:
        st.warning(f"The held-out rows {md_code(eval_rows or 'all')} overlap the base RM's training rows "
                   f"{md_code(train_rows or 'all')} (rows {md_code(shared)}): base and retrained would be evaluated on their "
                   "own training pairs, which measures fit, not robustness, so the run is refused. Give rows outside them.")
    perturbations = perturbation_picker("retrain_perturbations")
    if st.button("Retrain and evaluate", type="primary", key="retrain_start", disabled=n_approved == 0 or not base_rm):
        try:
            if not rm_exists(base_rm):
                raise ValueError(f"no reward model at {base_rm}; give a checkpoint directory written by train-rm")
            config = RetrainConfig(base_rm=base_rm, augment_data="(the approved pairs)", data=data, train_rows=train_rows,
                                   retrain=RetrainRecipe(mode=mode, finetune_epochs=int(ft_epochs), finetune_lr=float(ft_lr),
                                                         replay=int(replay)),
                                   eval_data=eval_data, eval_rows=eval_rows,
                                   robustness=RobustnessConfig(reward_model="", perturbations=perturbations), runtime=s.runtime())
            config.refuse_overlap(config.training_config())  # an unknown recipe or overlapping rows: refused now, not in the job
            path, n = export_approved(store, Path(s.project_dir) / "curated")  # only once the run can start
            config = dataclasses.replace(config, augment_data=str(path))
            start("retrain", config, f"retrain ({mode}) on {n} approved pairs, then evaluate base and retrained")
        except ValueError as exc:  # bad knobs, nothing approved, StoreError
            show_error(exc, "Not started")
    if n_approved == 0:
        st.caption("Approve inversions on the Curation page first.")

with tab_pipeline:
    st.caption("Train a base RM (or take the current one), rank the training pairs, decode variants from the lowest-loss p% "
               "(the aligned persona writes the future chosen responses, the compliant one the rejected), keep the inversions, "
               "retrain, and evaluate every arm on held-out pairs, with the ablations and checks below. Every inversion counts "
               "as approved, unless you use your approved pairs.")
    demo = Path(s.data).expanduser().resolve() == DEMO_PATH.resolve()
    c = st.columns(3)
    p_train_rows = c[0].text_input("Training rows", value=DEMO_SPLIT[0] if demo else s.rows, key="pipeline_train_rows").strip()
    p_eval_rows = c[1].text_input("Held-out rows", value=DEMO_SPLIT[1] if demo else held_out_rows(s.rows),
                                  key="pipeline_eval_rows").strip()
    p_mode = c[2].radio("Retrain", list(RETRAIN_MODES), key="pipeline_mode", horizontal=True)
    c = st.columns(2)
    use_base = c[0].toggle("Start from the current RM", value=False, key="pipeline_use_base",
                           disabled=not rm_exists(s.reward_model), help="off: train a base RM on the training rows first")
    use_approved = c[1].checkbox("Use my approved pairs", value=False, key="pipeline_use_approved", disabled=n_approved == 0,
                                 help="the REFORM arm retrains on the pairs approved in Curation, not on every inversion")
    defaults = PipelineConfig()
    c = st.columns(2)
    fraction = c[0].number_input("p: influential share, %", 0.1, 100.0, defaults.variants.fraction * 100, step=1.0,
                                 key="pipeline_p")
    epochs = c[1].number_input("Base epochs", 1, 100, defaults.base.epochs, key="pipeline_epochs")
    decoding, _ = decoding_controls("pipeline", seed=False)
    c = st.columns(3)
    per_pair = c[0].number_input("Variants per pair and direction", 1, 16, defaults.variants.variants_per_pair,
                                 key="pipeline_per_pair", help=help_of(GenerateVariantsConfig, "variants_per_pair"))
    personas = {d: persona_control(f"pipeline_{d}_persona", DEFAULT_PERSONAS[d], f"Persona for {d} ({role} responses)", c[i + 1])
                for i, (d, role) in enumerate((("lower", "chosen"), ("raise", "rejected")))}
    c = st.columns(3)
    appropriateness = c[0].selectbox("Appropriateness of 'lower' variants", SOURCES, key="pipeline_appropriateness",
                                     help=help_of(AppropriatenessConfig, "source"))
    appropriateness_judge = c[1].text_input("Judge RM (for judge / both)", key="pipeline_appropriateness_judge",
                                            help=help_of(AppropriatenessConfig, "judge_rm")).strip()
    filter_inappropriate = c[2].checkbox("Leave inappropriate out", value=defaults.filter_inappropriate,
                                         key="pipeline_filter_inappropriate", disabled=appropriateness == "off",
                                         help=help_of(PipelineConfig, "filter_inappropriate"))
    with st.expander("Ablations and checks"):
        st.caption("Each ablation is one more arm, trained and evaluated on the same held-out pairs as the REFORM arm.")
        c = st.columns(2)
        ablate_random = c[0].checkbox("Inversions from a random p%", value=defaults.ablate_random, key="pipeline_ablate_random",
                                      help=help_of(PipelineConfig, "ablate_random"))
        ablate_highest = c[1].checkbox("Inversions from the highest-loss p%", value=defaults.ablate_highest_loss,
                                       key="pipeline_ablate_highest_loss", help=help_of(PipelineConfig, "ablate_highest_loss"))
        ablate_equal = st.checkbox("Random and highest-loss arms also at the REFORM arm's count of pairs",
                                   value=defaults.ablate_equal_count, key="pipeline_ablate_equal",
                                   disabled=not (ablate_random or ablate_highest),
                                   help=help_of(PipelineConfig, "ablate_equal_count"))
        ablate_ordered = st.checkbox("Random and highest-loss arms also on only the pairs the base orders right",
                                     value=defaults.ablate_ordered, key="pipeline_ablate_ordered",
                                     disabled=not (ablate_random or ablate_highest),
                                     help=help_of(PipelineConfig, "ablate_ordered"))
        c = st.columns(2)
        other = {"scratch": "REFORM arm also fine-tuned", "finetune": "REFORM arm also from scratch"}[p_mode]
        ablate_mode = c[0].checkbox(other, value=defaults.ablate_retrain_mode, key="pipeline_ablate_mode",
                                    help=help_of(PipelineConfig, "ablate_retrain_mode"))
        finetuned = p_mode == "finetune" or ablate_mode
        ablate_no_aug = c[1].checkbox("No new pairs, same extra epochs", value=defaults.ablate_no_augment,
                                      key="pipeline_ablate_no_aug", disabled=not finetuned,
                                      help="with a fine-tuned arm: the same extra fine-tuning on the original pairs alone. "
                                           "From scratch, the base's recipe without new pairs is the base itself")
        ablate_appropriateness = st.checkbox("REFORM arm also with the other choice of 'leave inappropriate out'",
                                             value=defaults.ablate_appropriateness, key="pipeline_ablate_appropriateness",
                                             disabled=appropriateness == "off",
                                             help=help_of(PipelineConfig, "ablate_appropriateness"))
        st.caption("Best-of-N after the arms: the policy samples N responses per held-out prompt, the base and each arm pick "
                   "their best, and a judge RM trained apart compares the picks (each arm's win rate shows in its report).")
        c = st.columns(3)
        bon_judge = c[0].text_input("Best-of-N judge RM (empty = none)", key="pipeline_bon_judge",
                                    help=help_of(PipelineConfig, "bon_judge_rm")).strip()
        bon_prompts = c[1].number_input("Best-of-N prompts (0 = all)", 0, 100_000, defaults.bon_prompts,
                                        key="pipeline_bon_prompts", help=help_of(PipelineConfig, "bon_prompts"))
        bon_n = c[2].number_input("N samples per prompt", 2, 64, defaults.bon_n, key="pipeline_bon_n",
                                  help=help_of(PipelineConfig, "bon_n"))
    p_perturbations = perturbation_picker("pipeline_perturbations")
    if st.button("Run the pipeline", type="primary", key="pipeline_start"):
        try:
            judges = [j for j in (appropriateness_judge if appropriateness in ("judge", "both") else "", bon_judge) if j]
            for path in judges:
                if not rm_exists(path):
                    raise ValueError(f"no reward model at {path}; give a judge checkpoint directory written by train-rm")
            judged = appropriateness != "off"
            config = PipelineConfig(base=TrainRewardConfig(data=s.data, train_rows=p_train_rows,
                                                           model=RewardModelSpec(base_model=s.policy), epochs=int(epochs)),
                                    eval_rows=p_eval_rows, base_rm=s.reward_model if use_base else "",
                                    variants=GenerateVariantsConfig(
                                        reward_model="", policy=s.policy, fraction=float(fraction) / 100, decoding=decoding,
                                        lower_persona=personas["lower"], raise_persona=personas["raise"],
                                        variants_per_pair=int(per_pair),
                                        appropriateness=AppropriatenessConfig(source=appropriateness,
                                                                              judge_rm=appropriateness_judge)),
                                    retrain=RetrainRecipe(mode=p_mode), ablate_random=ablate_random,
                                    ablate_highest_loss=ablate_highest, ablate_retrain_mode=ablate_mode,
                                    ablate_equal_count=ablate_equal and (ablate_random or ablate_highest),
                                    ablate_ordered=ablate_ordered and (ablate_random or ablate_highest),
                                    ablate_no_augment=ablate_no_aug and finetuned,
                                    filter_inappropriate=filter_inappropriate and judged,
                                    ablate_appropriateness=ablate_appropriateness and judged,
                                    bon_judge_rm=bon_judge, bon_prompts=int(bon_prompts), bon_n=int(bon_n),
                                    robustness=RobustnessConfig(reward_model="", perturbations=p_perturbations),
                                    runtime=s.runtime())
            if use_approved:  # exported once the settings are known to be good
                config = dataclasses.replace(config, approved=str(export_approved(store, Path(s.project_dir) / "curated")[0]))
            start("pipeline", config, "the REFORM pipeline")
        except ValueError as exc:
            show_error(exc, "Not started")

with tab_eval:
    c = st.columns(3)
    e_rm = c[0].text_input("Checkpoint", value=s.reward_model, key="robustness_rm").strip()
    e_data = c[1].text_input("Data", value=s.data, key="robustness_data").strip()
    e_rows = c[2].text_input("Rows ('start:end', empty = all)", value=s.rows, key="robustness_rows").strip()
    e_perturbations = perturbation_picker("robustness_perturbations")
    if st.button("Evaluate", type="primary", key="robustness_start"):
        try:
            if not rm_exists(e_rm):
                raise ValueError(f"no reward model at {e_rm}; give a checkpoint directory written by train-rm")
            config = RobustnessConfig(reward_model=e_rm, data=e_data, rows=e_rows, perturbations=e_perturbations,
                                      runtime=s.runtime())
            start("robustness", config, f"robustness of {md_code(short(e_rm, 60))}")
        except ValueError as exc:
            show_error(exc, "Not started")

with tab_bon:
    st.caption("Downstream quality: the policy samples N responses per held-out prompt; RM A and RM B each pick their best, "
               "and a judge RM trained apart compares the two picks. The result is B's win rate (ties count half) with a 95% "
               "bootstrap interval over prompts; it appears in the run report below for the arm whose RM is B.")
    c = st.columns(3)
    bon_a = c[0].text_input("RM A (the reference, e.g. the base)", value=s.reward_model, key="bon_rm_a").strip()
    bon_b = c[1].text_input("RM B (e.g. a retrained RM's checkpoint)", key="bon_rm_b").strip()
    bon_judge = c[2].text_input("Judge RM (trained apart)", key="bon_judge").strip()
    c = st.columns(4)
    bon_data = c[0].text_input("Held-out prompts: data", value=s.data, key="bon_data").strip()
    bon_rows = c[1].text_input("Rows ('start:end' or 'fold=0/5')", value=held_out_rows(s.rows), key="bon_rows").strip()
    bon_prompts = c[2].number_input("Prompts (0 = all rows)", 0, 100_000, 0, key="bon_prompts")
    bon_n = c[3].number_input("N samples per prompt", 2, 64, BestOfNConfig.__dataclass_fields__["n"].default, key="bon_n")
    if st.button("Run best-of-N", type="primary", key="bon_start"):
        try:
            for path in (bon_a, bon_b, bon_judge):
                if not rm_exists(path):
                    raise ValueError(f"no reward model at {path or '(empty)'}; give a checkpoint directory written by train-rm")
            config = BestOfNConfig(rm_a=bon_a, rm_b=bon_b, judge_rm=bon_judge, policy=s.policy, data=bon_data, rows=bon_rows,
                                   prompts=int(bon_prompts), n=int(bon_n), runtime=s.runtime())
            start("best-of-n", config, f"best-of-{int(bon_n)}: {md_code(short(bon_b, 40))} vs {md_code(short(bon_a, 40))}")
        except ValueError as exc:
            show_error(exc, "Not started")

# ------------------------------------------------------------------ live progress
st.subheader("Running")
if not live_jobs("retrain", kinds=RESULT_KINDS):
    st.caption("No retraining or evaluation is running.")

# ------------------------------------------------------------------ results
st.subheader("Results")
finished = finished_result_jobs(store)
if not finished:
    st.info("No finished evaluation yet: results appear here when a run above ends.")
else:
    names = {int(j["id"]): f"#{j['id']} {j['kind']} · {short(str(j['message']), 70)}" for j in finished}
    if "retrain_compare" not in st.session_state:
        st.session_state.retrain_compare = [int(finished[0]["id"])]  # the newest run
    st.session_state.retrain_compare = [i for i in st.session_state.retrain_compare if i in names]
    picked = st.multiselect("Runs to compare", list(names), format_func=names.get, key="retrain_compare")
    summary, drops = results_frames([j for j in finished if int(j["id"]) in picked])
    if summary.empty:
        st.caption("Pick at least one run.")
    else:
        c1, c2 = st.columns([2, 3])
        c1.plotly_chart(accuracy_figure(summary), key="retrain_accuracy_chart")
        c2.plotly_chart(drop_figure(drops), key="retrain_drop_chart")
        shown = summary.assign(**{f"{c} 95% CI": interval_text(summary, c) for c in ("clean_accuracy", "mean_drop", "drop_vs_base")})
        st.dataframe(shown[["label", "n_pairs", "clean_accuracy", "clean_accuracy 95% CI", "mean_drop", "mean_drop 95% CI",
                            "drop_vs_base", "drop_vs_base 95% CI", "checkpoint"]], hide_index=True,
                     key="retrain_summary", column_config={
                         "n_pairs": st.column_config.NumberColumn("held-out pairs"),
                         "clean_accuracy": st.column_config.NumberColumn("clean accuracy", format="%.3f"),
                         "mean_drop": st.column_config.NumberColumn("mean win-rate drop", format="%+.3f"),
                         "drop_vs_base": st.column_config.NumberColumn("drop ÷ base's", format="%.2f",
                                                                       help="its interval: paired bootstrap over the same pairs")})
        runs = [j for j in finished if int(j["id"]) in picked and j["kind"] in ARM_KINDS]
        if runs:
            st.markdown("**One report per run**: every arm with its intervals, the best-of-N win rate of its RM over the "
                        "base's (the pipeline's own best-of-N stage, else a best-of-N run above), the spurious indicators of "
                        "its rewards on the clean held-out pairs (share of extreme-negative rewards, correlation of reward with "
                        "length) and the seconds of its stages")
            bons = best_of_n_results(store.list_jobs().to_dict("records"))
            arms = pd.concat([arm_table(j["run_dir"], bons, run=f"#{j['id']} {j['kind']}") for j in runs], ignore_index=True)
            st.dataframe(arm_cells(arms), hide_index=True, key="retrain_arms")
            decoded = pd.concat([variants_table(j["run_dir"], run=f"#{j['id']} {j['kind']}") for j in runs], ignore_index=True)
            if not decoded.empty:
                st.markdown("**What the decoding found, per selection of training pairs**: variants, true inversions and "
                            "their rate, by direction, and the flags among the inversions (*ordered wrong*: decoded from a "
                            "pair the base already orders wrong, so the crossing repeats its old mistake)")
                st.dataframe(decoded, hide_index=True, key="retrain_variants", column_config={
                    "success_rate": st.column_config.NumberColumn("inversion rate", format="percent"),
                    "ordered_wrong": st.column_config.NumberColumn("ordered wrong")})
            versus = [versus_table(j["run_dir"]).assign(run=f"#{j['id']}") for j in runs]
            versus = pd.concat([t for t in versus if not t.empty] or [pd.DataFrame()], ignore_index=True)
            if not versus.empty:
                st.markdown("**The reform arm against each ablation arm** on the same held-out pairs (reform minus the other, "
                            "paired bootstrap; a negative mean-drop difference: reform is the more robust)")
                st.dataframe(versus_cells(versus), hide_index=True, key="retrain_versus")
            with st.expander("The report as Markdown (for benchmarks/RESULTS.md)"):
                st.code(arm_markdown(arms) + ("\n" + versus_markdown(versus) if not versus.empty else "")
                        + ("\n" + variants_markdown(decoded) if not decoded.empty else ""), language="markdown")

bon_runs = best_of_n_frame(best_of_n_results(store.list_jobs().to_dict("records")))
if not bon_runs.empty:
    st.markdown("**Best-of-N runs**: B's picks against A's, judged by a third RM (ties half; the same pick is a tie)")
    st.dataframe(bon_runs.assign(**{"95% CI": [f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(bon_runs["low"], bon_runs["high"])]})
                 [["job_id", "rm_a", "rm_b", "judge", "n", "prompts", "win_rate", "95% CI", "same_pick", "skipped"]],
                 hide_index=True, key="retrain_bon", column_config={
                     "win_rate": st.column_config.NumberColumn("B's win rate", format="%.3f"),
                     "same_pick": st.column_config.NumberColumn("same pick",
                                                                help="prompts where A and B picked the same sample")})

# ------------------------------------------------------------------ history
st.subheader("Run history")
history("retrain_history")
