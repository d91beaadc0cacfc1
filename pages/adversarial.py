"""Adversarial attack (Adv-RM): a policy trained with RL (RLOO) to write responses the target RM scores
high while penalty RMs disagree. Pick the target, penalty and judge RMs (or train the missing ones as
jobs), set the reward and RL knobs, start the attack as a background job and follow its curves step by
step; browse what it kept (z-scores, disagreement, the judge's verdict, the rules that fired) and send
it to Curation, where each kept sample stands as the pair (y+ preferred over it)."""
import dataclasses
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from pages._draw import flash, fmt, md_code, md_escape, short, show_error, trace_figure
from pages._jobs import history, live_jobs, pick_job, start_from_page
from pages._project import project_store
from pages._routes import store_page
from pages._settings import rm_exists, settings
from reform_engine.adv_rounds import AdvRoundsConfig, read_rounds
from reform_engine.adversary import AdversarialRewardConfig, RLOOConfig
from reform_engine.attack import AttackConfig, companion_configs, read_kept, read_steps
from reform_engine.confirm import RULES, ConfirmConfig, KeepConfig
from reform_engine.data import hh_text
from reform_engine.jobs import ACTIVE, ingest_results, start_job
from reform_engine.retrain import base_training_config
from reform_engine.rollouts import AdapterConfig, ResponseConfig
from reform_engine.runs import read_json

FLASH_KEY = "adversarial_flash"
CURVES = [("target_z", "target z"), ("penalty_z", "penalty z (mean)"), ("disagreement", "disagreement Z_t − Z_p"), ("kl", "KL to π0"),
          ("entropy", "entropy per token"), ("length", "mean length (tokens)"), ("eos_rate", "EOS rate"),
          ("pass_rate", "filter-pass rate")]
DEFAULTS = AttackConfig(target_rm="t", penalty_rms="a,b")  # the settings' defaults, from their one home
DEFAULT_CONFIRM = DEFAULTS.confirm
ROUND_DEFAULTS = {f.name: f.default for f in dataclasses.fields(AdvRoundsConfig) if f.default is not dataclasses.MISSING}
CONFIRM_FIELDS = [("repeat_char_run", "char repeated N times"), ("repeat_times", "phrase repeated N times"),
                  ("punctuation_span", "N words without punctuation"), ("echo_words", "N words of the prompt echoed"),
                  ("perplexity_factor", "perplexity × base median"), ("capitals_ratio", "capital share above"),
                  ("capitals_min_letters", "… over N letters"), ("non_ascii_share", "non-ASCII share above"),
                  ("non_ascii_min_chars", "… over N characters")]


def penalty_paths() -> list[str]:
    return [p.strip() for p in st.session_state.get("adversarial_penalties", "").splitlines() if p.strip()]


def train_missing(target: str, n_penalties: int, judge: bool) -> None:
    """Start a train-rm job per missing RM and put the checkpoints they will write in the fields (a callback)."""
    s, store = settings(), project_store()
    try:
        configs = companion_configs(target, n_penalties, judge, data=s.data, rows=s.rows, runtime=s.runtime())
        started = []
        for role, config in configs:
            job = store.get_job(start_job(store, "train-rm", config))
            checkpoint = str(Path(job["run_dir"]) / "checkpoint")
            if role == "judge":
                st.session_state.adversarial_judge = checkpoint
            else:
                st.session_state.adversarial_penalties = "\n".join(penalty_paths() + [checkpoint])
            started.append(f"#{job['id']} {role} (seed {config.runtime.seed}, {config.model.finetune}, {config.train_sample} pairs)")
        flash(FLASH_KEY, f"Started train-rm job(s) {', '.join(started)}; their checkpoints are in the fields below and count once trained.")
    except ValueError as exc:  # no spec at the target, unreadable data, StoreError
        st.session_state.adversarial_train_error = exc


def draw_rounds(job: dict) -> None:
    """An adv-rounds job: one row per attack (pass rates, kept, confirmed, added pairs, why it stopped),
    pass rates by round, and each RM's clean accuracy and mean drop."""
    st.caption(f"{md_escape(job['state'])} · {md_escape(job['message'])} · run directory {md_code(job['run_dir'])}")
    rows, models = read_rounds(job["run_dir"])
    if not rows:
        st.caption("No round has finished yet.")
        return
    frame = pd.DataFrame(rows)
    st.dataframe(frame[["round", "arm", "target", "pass_rate", "base_pass_rate", "success_rate", "kept", "confirmed", "added",
                        "total_pairs", "stop"]], hide_index=True, key="adversarial_rounds_table",
                 column_config={c: st.column_config.NumberColumn(format="percent")
                                for c in ("pass_rate", "base_pass_rate", "success_rate")})
    fig = go.Figure()
    for arm, part in frame.groupby("arm", sort=False):
        fig.add_trace(go.Bar(x=[f"round {r} (vs {t})" for r, t in zip(part["round"], part["target"])], y=part["pass_rate"], name=arm))
    fig.update_layout(barmode="group", height=300, yaxis_title="fresh samples passing the filter", yaxis_tickformat=".0%",
                      margin=dict(l=10, r=10, t=30, b=10), title="Pass rate of each round's attack")
    st.plotly_chart(fig, key="adversarial_rounds_figure")
    if models:
        st.dataframe(pd.DataFrame([{"model": m["name"], "adversarial pairs": m["augment_pairs"], "clean accuracy": m["clean_accuracy"],
                                    "mean drop": m["mean_drop"]} for m in models]), hide_index=True, key="adversarial_rounds_models")
        st.page_link("pages/retrain.py", label="Every drop, per perturbation: Retrain & evaluate", icon=":material/model_training:")


def steps_figure(steps: pd.DataFrame) -> go.Figure:
    fig = make_subplots(rows=2, cols=4, subplot_titles=[title for _, title in CURVES], horizontal_spacing=0.06,
                        vertical_spacing=0.16)
    for i, (column, title) in enumerate(CURVES):
        fig.add_trace(go.Scatter(x=steps["step"], y=steps[column], mode="lines+markers", name=title, showlegend=False,
                                 hovertemplate="step %{x}: %{y:.3f}<extra>" + title + "</extra>"), row=i // 4 + 1, col=i % 4 + 1)
    fig.update_layout(height=460, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def draw_curves(run_dir: str, job_id: int) -> None:
    steps = pd.DataFrame(read_steps(run_dir))
    if steps.empty:
        st.caption("No RL step has finished yet (the base policy is being sampled for the z-scores).")
        return
    st.plotly_chart(steps_figure(steps), key=f"adversarial_curves_{job_id}")
    last = steps.iloc[-1]
    st.caption(f"Step {int(last['step'])}: reward {last['reward']:+.3f} = target z − λ·clip(penalty z) (above T: "
               f"{last['above_threshold']:.0%}) − C below T / when cut off (cut off: {last['incomplete_rate']:.0%}) − β·KL "
               f"({last['kl_term']:.3f}); {last['seconds']:.1f} s per step.")


def draw_kept(store, job: dict) -> None:
    """A finished attack: its pass rates, the kept samples with their evidence, and the hand-off to Curation."""
    job_id = int(job["id"])
    metrics = read_json(job["result_path"]) if job["result_path"] else None
    if metrics:
        c = st.columns(5)
        c[0].metric("Pass rate (final policy)", f"{metrics['pass_rate']:.1%}")
        c[1].metric("Pass rate (base policy)", f"{metrics['base_pass_rate']:.1%}")
        c[2].metric("Kept", metrics["kept"])
        c[3].metric("Confirmed", metrics["confirmed"])
        c[4].metric("s per RL step", f"{metrics['seconds_per_step']:.2f}")
    kept = read_kept(job["run_dir"])
    if not kept:
        st.info("Nothing kept: no sample passed the filter." if job["state"] == "succeeded" else "This attack did not finish.")
        return
    stored = store.list_variants(inversions_only=False, job_id=job_id)
    by_text = {r["text"]: r for r in kept}
    status = dict(zip(stored["text"], stored["status"]))
    table = pd.DataFrame({"#": range(len(kept)), "sample": [short(r["text"], 80) for r in kept],
                          "Z_t": [r["z_target"] for r in kept], "Z_p": [r["z_penalty"] for r in kept], "U": [r["u"] for r in kept],
                          "U z": [r["u_z"] for r in kept],
                          "judge: sample − y+": [None if r["judge_sample"] is None else r["judge_sample"] - r["judge_chosen"]
                                                 for r in kept],
                          "rules": [", ".join(f["rule"] for f in r["flags"]) for r in kept], "confirmed": [r["confirmed"] for r in kept],
                          "from": [r["origin"] for r in kept], "curation": [status.get(r["text"], "not sent") for r in kept]})
    st.dataframe(table, hide_index=True, key="adversarial_kept_table", column_config={
        c: st.column_config.NumberColumn(format="%+.2f") for c in ("Z_t", "Z_p", "U", "U z", "judge: sample − y+")})
    c1, c2, c3 = st.columns([1, 1, 2])
    if c1.button("Send to Curation", key="adversarial_send", help="the store holds each kept sample once, however often it is sent"):
        try:
            got = ingest_results(store, job_id)["variants"]
            flash(FLASH_KEY, f"{len(got)} kept sample(s) of attack #{job_id} are in the Curation queue as pairs (y+ preferred over the sample).")
            st.rerun()
        except ValueError as exc:
            show_error(exc, "Not sent")
    confirmed = [(int(i), by_text[t]) for i, t, state in zip(stored["id"], stored["text"], stored["status"])
                 if state == "pending" and t in by_text and by_text[t]["confirmed"]]
    if c2.button(f"Approve the {len(confirmed)} confirmed", key="adversarial_approve", disabled=not confirmed,
                 help="a decision in the store, as on the Curation page, noting what confirmed each"):
        for variant_id, r in confirmed:
            store.decide(variant_id, "approve", note=f"Adv-RM, confirmed by {', '.join(r['confirmed_by'])}")
        flash(FLASH_KEY, f"Approved {len(confirmed)} confirmed sample(s) of attack #{job_id}.")
        st.rerun()
    c3.page_link("pages/curation.py", label="Open Curation", icon=":material/fact_check:")

    pick = st.selectbox("Kept sample", list(range(len(kept))), key="adversarial_sample",
                        format_func=lambda i: f"{i} · {short(kept[i]['text'], 70)}")
    r = kept[pick]
    st.markdown("**Prompt**")
    st.code(hh_text(r["prompt"]).strip(), language=None, wrap_lines=True)
    c1, c2 = st.columns(2)
    c1.markdown(f"**y+ (the dataset's chosen)** · target r = {fmt(r['r_chosen'])}"
                + (f" · judge {fmt(r['judge_chosen'])}" if r["judge_chosen"] is not None else ""))
    c1.code(r["original_chosen"], language=None, wrap_lines=True)
    c2.markdown(f"**Adversarial sample** · target r = {fmt(r['r_variant'])}"
                + (f" · judge {fmt(r['judge_sample'])}" if r["judge_sample"] is not None else "")
                + f" · perplexity under π0 {r['perplexity']:.1f}")
    c2.code(r["text"], language=None, wrap_lines=True)
    st.caption(f"Z_t {r['z_target']:+.2f}, Z_p {r['z_penalty']:+.2f} (each penalty RM: "
               f"{', '.join(f'{z:+.2f}' for z in r['z_penalties'])}), U {r['u']:+.2f} (z {r['u_z']:+.2f}); "
               f"from {md_escape(r['origin'])}.")
    if r["confirmed"]:
        st.error(f"Confirmed bad by: {md_escape(', '.join(r['confirmed_by']))}", icon=":material/gpp_bad:")
    else:
        st.warning("Not confirmed: neither the judge nor a rule says it is bad. A person decides, in Curation.")
    for f in r["flags"]:
        st.markdown(f"- **{md_escape(f['rule'])}**: {md_escape(f['evidence'])}")
    if r["steps"]:
        st.plotly_chart(trace_figure([("sample", [p["piece"] for p in r["steps"]], [p["running_reward"] for p in r["steps"]])],
                                     {"y+": r["r_chosen"], "y−": r["r_rejected"]}, title="Target RM's reward, token by token",
                                     height=300, tick_labels=[p["piece"] for p in r["steps"]]), key="adversarial_trace")


s, store = store_page("Adversarial attack", FLASH_KEY)
st.caption("Adv-RM: an adversary policy is trained with RLOO on r = Z_t − λ·clip(Z_p) when the target's z-score Z_t > T "
           "(else Z_t − C; −C without EOS), minus β·KL to π0; z-scores are per prompt, against the base policy's samples. "
           "What passes the keep filter (Z_t > T, disagreement z > 1.96, EOS) becomes a rejected response.")

# ------------------------------------------------------------------ the reward models
st.subheader("Reward models")
target = st.text_input("Target RM: the one under attack (checkpoint directory)", value=s.reward_model, key="adversarial_target").strip()
st.text_area("Penalty RMs: at least 2, one checkpoint per line (the same recipe, other seeds or subsets)", key="adversarial_penalties",
             height=80)
judge = st.text_input("Judge RM: confirms a sample is bad, never in the reward (empty: the rules alone)",
                      key="adversarial_judge").strip()
penalties = penalty_paths()
roles = [("target", target)] + [(f"penalty {i + 1}", p) for i, p in enumerate(penalties)] + ([("judge", judge)] if judge else [])
st.dataframe(pd.DataFrame({"role": [r for r, _ in roles], "checkpoint": [p for _, p in roles],
                           "found": ["yes" if rm_exists(p) else "missing" for _, p in roles]}), hide_index=True,
             key="adversarial_rm_table")
missing_penalties = max(0, 2 - sum(rm_exists(p) for p in penalties))
missing = [name for name, p in roles if not rm_exists(p)]
if missing:
    st.warning(f"Missing (or still training): {md_escape(', '.join(missing))}. A checkpoint counts once its train-rm job has written it.")
need_judge = not judge
if rm_exists(target) and (missing_penalties or need_judge):
    what = ([f"{missing_penalties} penalty RM(s)"] if missing_penalties else []) + (["a judge RM"] if need_judge else [])
    st.button(f"Train {' and '.join(what)} (background jobs)", key="adversarial_train",
              on_click=train_missing, args=(target, missing_penalties, need_judge),
              help="The target's recipe on other seeds and 80% subsets of its training pairs; the last penalty head-only.")
show_error(st.session_state.pop("adversarial_train_error", None), "Not started")
if not rm_exists(target):
    st.info("Give a trained target RM first (Home trains one).")

# ------------------------------------------------------------------ the attack's settings
st.subheader("Attack")
st.caption(f"Prompts and y+ from {md_code(short(s.data, 60))}" + (f" rows {md_code(s.rows)}" if s.rows else "")
           + f"; the policy {md_code(short(s.policy, 40))} gets LoRA on its top layers.")
c = st.columns(4)
penalty_weight = c[0].number_input("λ penalty weight (0 = over-optimisation baseline)", 0.0, 100.0, DEFAULTS.reward.penalty_weight, step=0.5,
                                   key="adversarial_lambda")
kl_weight = c[1].number_input("β KL weight", 0.0, 10.0, DEFAULTS.reward.kl_weight, step=0.01, format="%.3f", key="adversarial_beta")
threshold = c[2].number_input("T: target z threshold", -100.0, 100.0, DEFAULTS.reward.threshold, step=0.25, key="adversarial_threshold")
below_cost = c[3].number_input("C: cost below T or without EOS", 0.0, 1000.0, DEFAULTS.reward.below_cost, step=0.5, key="adversarial_cost")
c = st.columns(4)
group_size = c[0].number_input("Group size k (rollouts per prompt)", 2, 64, DEFAULTS.rloo.group_size, key="adversarial_group")
prompts_per_step = c[1].number_input("Prompts per step", 1, 64, DEFAULTS.rloo.prompts_per_step, key="adversarial_prompts_per_step")
n_prompts = c[2].number_input("Prompts attacked", 1, 100_000, DEFAULTS.prompts, key="adversarial_prompts")
steps = c[3].number_input("RL steps", 1, 1_000_000, DEFAULTS.rloo.steps, key="adversarial_steps")
c = st.columns(5)
max_tokens = c[0].number_input("Max new tokens", 2, 1024, DEFAULTS.response.max_new_tokens, key="adversarial_max_tokens")
sentence_window = c[1].number_input("A sentence end in the last N tokens ends a response (0 = EOS only)", 0, 1024,
                                    DEFAULTS.response.sentence_window, key="adversarial_sentence_window")
seed = c[2].number_input("Seed", 0, 2**31 - 1, DEFAULTS.runtime.seed, key="adversarial_seed")
lr = c[3].number_input("Learning rate", 1e-7, 1.0, DEFAULTS.rloo.lr, step=1e-5, format="%.1e", key="adversarial_lr")
lora_layers = c[4].number_input("LoRA on the top N layers", 1, 200, DEFAULTS.adapter.lora_layers, key="adversarial_lora_layers")
with st.expander("Normalisation and the keep filter"):
    c = st.columns(4)
    clip_low = c[0].number_input("clip Z_p: low", -100.0, 100.0, DEFAULTS.reward.clip_low, step=0.5, key="adversarial_clip_low")
    clip_high = c[1].number_input("clip Z_p: high", -100.0, 100.0, DEFAULTS.reward.clip_high, step=0.5, key="adversarial_clip_high")
    base_samples = c[2].number_input("Base samples per prompt (z-scores)", 2, 256, DEFAULTS.reward.base_samples, key="adversarial_base_samples")
    fresh_samples = c[3].number_input("Fresh samples per prompt (pass rates)", 0, 256, DEFAULTS.keep.fresh_samples, key="adversarial_fresh")
    c = st.columns(4)
    u_z_min = c[0].number_input("Keep: disagreement z above", -100.0, 100.0, DEFAULTS.keep.u_z_min, step=0.1, key="adversarial_u_z")
    keep_last = c[1].number_input("Keep from the last share of steps", 0.0, 1.0, DEFAULTS.keep.keep_last, step=0.1, key="adversarial_keep_last")
    cap_per_prompt = c[2].number_input("Cap per prompt", 1, 1000, DEFAULTS.keep.cap_per_prompt, key="adversarial_cap_prompt")
    cap_total = c[3].number_input("Cap in total", 1, 1_000_000, DEFAULTS.keep.cap_total, key="adversarial_cap_total")
with st.expander("Confirmation rules (a kept sample any of them flags is confirmed bad, as is one the judge scores below y+)"):
    rules = st.multiselect("Rules", [r.name for r in RULES], DEFAULT_CONFIRM.names(), key="adversarial_rules")
    c = st.columns(5)
    confirm_values = {name: c[i % 5].number_input(label, value=getattr(DEFAULT_CONFIRM, name), key=f"adversarial_confirm_{name}",
                                                  **({"step": 0.05, "format": "%.2f"} if isinstance(getattr(DEFAULT_CONFIRM, name), float)
                                                     else {"step": 1}))
                      for i, (name, label) in enumerate(CONFIRM_FIELDS)}


def attack_config() -> AttackConfig:
    """The attack the settings above describe (raises ValueError, saying what to fix)."""
    confirm = ConfirmConfig(rules=",".join(rules), **confirm_values)
    reward = AdversarialRewardConfig(penalty_weight=float(penalty_weight), kl_weight=float(kl_weight), threshold=float(threshold),
                                     below_cost=float(below_cost), clip_low=float(clip_low), clip_high=float(clip_high),
                                     base_samples=int(base_samples))
    rloo = RLOOConfig(group_size=int(group_size), prompts_per_step=int(prompts_per_step), steps=int(steps), lr=float(lr))
    keep = KeepConfig(keep_last=float(keep_last), fresh_samples=int(fresh_samples), u_z_min=float(u_z_min),
                      cap_per_prompt=int(cap_per_prompt), cap_total=int(cap_total))
    return AttackConfig(target_rm=target, penalty_rms=",".join(penalties), judge_rm=judge, policy=s.policy, data=s.data,
                        rows=s.rows, prompts=int(n_prompts), reward=reward, rloo=rloo,
                        response=ResponseConfig(max_new_tokens=int(max_tokens), sentence_window=int(sentence_window)),
                        adapter=AdapterConfig(lora_layers=int(lora_layers)), keep=keep, confirm=confirm, runtime=s.runtime(int(seed)))


ready = rm_exists(target) and not missing_penalties and len(penalties) >= 2 and (not judge or rm_exists(judge))
if st.button("Start the attack", type="primary", key="adversarial_start", disabled=not ready):
    try:
        start_from_page(store, "attack", attack_config(), FLASH_KEY, picker_key="adversarial_job", message=lambda i:
                        f"Started attack job #{i}: curves below as it goes; kept samples join Curation when it ends.")
    except ValueError as exc:  # AttackConfig's checks, StoreError
        show_error(exc, "Not started")

# ------------------------------------------------------------------ rounds of adversarial training
st.subheader("Rounds: attack, add the samples as pairs, retrain, attack again")
st.caption("An adv-rounds job runs the attack above on the target, adds what it kept as pairs (y+ preferred over the sample), "
           "retrains the target's recipe from scratch on its pairs plus all adversarial pairs so far, and attacks the retrained "
           "RM with fresh z-scores; every RM is evaluated on the same held-out pairs (Retrain & evaluate shows them).")
c = st.columns(3)
n_rounds = c[0].number_input("Rounds (retrainings)", 1, 20, ROUND_DEFAULTS["rounds"], key="adversarial_rounds")
pass_floor = c[1].number_input("Stop below this pass rate", 0.0, 1.0, ROUND_DEFAULTS["pass_floor"], step=0.01,
                               key="adversarial_pass_floor")
eval_rows = c[2].text_input("Held-out rows ('' = after the training rows)", ROUND_DEFAULTS["eval_rows"], key="adversarial_eval_rows")
c = st.columns(3)  # the toggles on a row of their own: in a fifth of a row their labels were cut
confirmed_only = c[0].toggle("Confirmed samples only", ROUND_DEFAULTS["confirmed_only"], key="adversarial_confirmed_only")
baseline_arm = c[1].toggle("Also the λ = 0 arm", ROUND_DEFAULTS["baseline_arm"], key="adversarial_baseline_arm")
baseline_rounds = c[2].number_input("λ = 0 beside the first N attacks (0 = every one)", 0, 21, ROUND_DEFAULTS["baseline_rounds"],
                                    key="adversarial_baseline_rounds", disabled=not baseline_arm,
                                    help="1 saves an attack's time per later round; round 1's arm is the one the attack is judged against")
recipe_known = rm_exists(target) and base_training_config(target) is not None
train_rows = "" if recipe_known else st.text_input(
    f"The target was not trained here: its training rows in {short(s.data, 40)} (retraining repeats its recipe on them)",
    key="adversarial_train_rows").strip()
if st.button("Start the rounds", key="adversarial_rounds_start", disabled=not ready):
    try:
        rounds_config = AdvRoundsConfig(attack=attack_config(), rounds=int(n_rounds), pass_floor=float(pass_floor),
                                        eval_rows=eval_rows.strip(), confirmed_only=confirmed_only, baseline_arm=baseline_arm,
                                        baseline_rounds=int(baseline_rounds),
                                        runtime=s.runtime(int(seed)),
                                        **({} if recipe_known else {"data": s.data, "train_rows": train_rows}))
        rounds_config.recipe()  # an unknown recipe is refused here, not in the job
        start_from_page(store, "adv-rounds", rounds_config, FLASH_KEY, picker_key="adversarial_rounds_job",
                        message=lambda i: f"Started adv-rounds job #{i}: its rounds appear below as they finish.")
    except ValueError as exc:
        show_error(exc, "Not started")

# ------------------------------------------------------------------ running jobs
st.subheader("Running")
if not live_jobs("adversarial", kinds=["attack", "adv-rounds", "train-rm"]):
    st.caption("No attack, rounds or RM training is running.")

# ------------------------------------------------------------------ rounds: one row per attack
rounds_job = pick_job(store, "adv-rounds", "Rounds", "Adv-rounds job", key="adversarial_rounds_job")
if rounds_job is not None:
    draw_rounds(rounds_job)

# ------------------------------------------------------------------ one attack: its curves and what it kept
job = pick_job(store, "attack", "Curves and kept samples", "Attack job", key="adversarial_job")
if job is None:
    st.stop()
job_id = int(job["id"])
st.caption(f"{md_escape(job['state'])} · {md_escape(job['message'])} · run directory {md_code(job['run_dir'])}")
if job["state"] in ACTIVE:
    st.fragment(draw_curves, run_every=2.0)(job["run_dir"], job_id)
else:
    draw_curves(job["run_dir"], job_id)
    draw_kept(store, job)

st.subheader("Attack history")
history("adversarial_history", kinds=["attack"])
