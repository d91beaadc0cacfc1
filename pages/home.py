"""Home / setup: the policy, the reward model and the data in use, how good the RM is on that data
(with the length-only baselines), and the switches for all three. Without an RM, a base RM is
trained here as a background job."""
import dataclasses
from pathlib import Path

import streamlit as st

from pages._controls import column_mapping
from pages._draw import md_code, md_escape, show_error, show_trust_warning
from pages._jobs import live_jobs
from pages._loading import require_data, require_policy, require_rm, validate_data
from pages._project import project_store
from pages._routes import through_router
from pages._scoring import require_scored, show_scoring_skips
from pages._settings import UPLOAD_LIMIT_MB, rm_exists, settings, update_settings
from reform_engine.data import DEMO_PATH, DataError, column_map_of, save_upload
from reform_engine.evaluation import pairwise_metrics
from reform_engine.jobs import ACTIVE, start_job
from reform_engine.reports import latest_job, log_tail
from reform_engine.reward_model import FINETUNE_MODES, RewardModelSpec
from reform_engine.training import TrainRewardConfig

BASE_RUN = "base-rm"    # <project>/runs/base-rm/checkpoint is the default reward model (pages/_settings.py)


def model_problem(name: str) -> str:
    """Why model ``name`` cannot be loaded here ('' if it may be), found without loading it."""
    from reform_engine.models import ModelError, check_model_name

    try:
        check_model_name(name)
    except ModelError as exc:
        return str(exc)
    return ""


def train_base_rm(s) -> None:
    """No RM yet: train one on the data in use as a background job, with live progress."""
    store = project_store()
    run_dir = Path(s.project_dir) / "runs" / BASE_RUN
    job = latest_job(store, "train-rm", run_dir)
    if job is not None and job["state"] in ACTIVE:
        st.info("Training a base reward model in the background; it is used here as soon as it is done.")
        if live_jobs("home", job_ids=[job["id"]]):
            return
        job = store.get_job(job["id"])
    if job is not None and job["state"] == "succeeded" and rm_exists(str(run_dir / "checkpoint")):
        update_settings(reward_model=str(Path(job["run_dir"]) / "checkpoint"))
        st.rerun()
    if job is not None and job["state"] in ("failed", "cancelled"):
        st.error(f"The last base training (job #{job['id']}) {job['state']}: {md_escape(job['message'])}")
        with st.expander("Its log"):
            st.code(log_tail(job) or "(nothing logged)", language=None)
    st.info("There is no reward model yet. Train a base RM on the data in use: it runs as a background job "
            "(you can leave this page), and becomes the reward model of every page when it is done.")
    defaults = TrainRewardConfig()
    c = st.columns(4)
    backbone = c[0].text_input("Backbone (model id or directory)", value=s.policy, key="home_train_model",
                               help="the policy by default: decoding is fastest when policy and RM share their layers")
    rows = c[1].text_input("Training rows ('start:end', empty = all)", value=s.rows, key="home_train_rows",
                           help="hold out the rest for evaluating robustness later, e.g. 0:132 of the demo set")
    finetune = c[2].selectbox("Fine-tuning", list(FINETUNE_MODES), key="home_train_finetune")
    lora_layers = c[3].number_input("LoRA on the top N layers (0 = all)", 0, 200, defaults.model.lora_layers or 0,
                                    key="home_train_lora_layers")
    c = st.columns(4)
    epochs = c[0].number_input("Epochs", 1, 100, defaults.epochs, key="home_train_epochs")
    max_steps = c[1].number_input("Max steps (0 = the epochs decide)", 0, 1_000_000, 0, key="home_train_max_steps")
    batch_size = c[2].number_input("Batch size (pairs)", 1, 512, defaults.batch_size, key="home_train_batch")
    lr = c[3].number_input("Learning rate", 1e-7, 1.0, defaults.lr, step=1e-5, format="%.1e", key="home_train_lr")
    max_length = st.number_input("Max tokens per sequence", 16, 32_768, defaults.model.max_length, key="home_train_max_length")
    if st.button("Train a base reward model", type="primary", key="home_train"):
        try:
            problem = model_problem(backbone.strip() or s.policy)
            if problem:  # refused here, at once, rather than by the job process after its start-up
                raise ValueError(problem)
            model = RewardModelSpec(base_model=backbone.strip() or s.policy, finetune=finetune, lora_layers=int(lora_layers) or None,
                                    max_length=int(max_length))
            config = TrainRewardConfig(data=s.data, train_rows=rows.strip(), model=model, epochs=int(epochs),
                                       max_steps=int(max_steps), batch_size=int(batch_size), lr=float(lr), runtime=s.runtime())
            start_job(store, "train-rm", config, run_dir=run_dir)
            st.rerun()
        except ValueError as exc:  # StoreError and DataError too: a bad knob, or a run still using the directory
            show_error(exc, "Not started")
    with st.expander("Or from a terminal"):
        st.code(f"python -m reform_engine train-rm --data {s.data} --run-dir {run_dir}", language="bash")


through_router()
st.title("REFORM workbench")
st.write("Find where your reward model is wrong, curate the evidence, and retrain it (REFORM, arXiv 2507.06419): "
         "rank the training pairs by loss, search for inversions with reward-guided decoding, and inspect any "
         "response token by token.")
s = settings()

st.subheader("In use")
c_policy, c_rm, c_data = st.columns(3)
with c_policy:
    st.markdown(f"**Policy** (proposes tokens)  \n{md_code(s.policy)}")
    if require_policy(stop=False) is not None:
        st.caption("loaded")
with c_rm:
    st.markdown(f"**Reward model**  \n{md_code(s.reward_model or 'none')}")
    rm = require_rm(stop=False)
    if rm is not None:
        st.caption(f"loaded · {'LoRA' if rm.spec.finetune == 'lora' else rm.spec.finetune} on {md_code(rm.spec.base_model)}")
with c_data:
    st.markdown(f"**Data**  \n{md_code(s.data)}" + (f" rows {md_code(s.rows)}" if s.rows else ""))
loaded = require_data(stop=False)  # below the columns: a message about the data gets the page's width

if loaded is not None:
    data, pairs = loaded
    cols = st.columns(4)
    cols[0].metric("Pairs", len(pairs))
    cols[1].metric("Multi-turn dialogues", sum(len(p.prompt) > 1 for p in pairs))
    cols[2].metric("Chosen is longer", f"{sum(len(p.chosen) > len(p.rejected) for p in pairs) / len(pairs):.0%}")
    cols[3].metric("Invalid rows skipped", len(data.report.skipped))

st.subheader("Reward model on this data")
if not rm_exists(s.reward_model):
    train_base_rm(s)
elif rm is not None and loaded is not None:
    scored = require_scored(stop=False)
    if scored is not None:
        show_scoring_skips()
        import torch

        m = pairwise_metrics(torch.tensor([x.r_chosen for x in scored]), torch.tensor([x.r_rejected for x in scored]),
                             [x.pair for x in scored])
        cols = st.columns(4)
        cols[0].metric("RM accuracy", f"{m.accuracy:.1%}", help="share of pairs with r(x, y+) > r(x, y-); a tie counts one half")
        cols[1].metric("Always the longer", f"{m.longer_baseline:.1%}", help="accuracy of a rule that prefers the longer response")
        cols[2].metric("Always the shorter", f"{m.shorter_baseline:.1%}", help="accuracy of a rule that prefers the shorter response")
        cols[3].metric("Mean margin r+ − r−", f"{m.mean_margin:+.3f}")
        if m.accuracy <= max(m.longer_baseline, m.shorter_baseline):
            st.warning("The RM does not beat a length-only rule on this data: it has learned little beyond length.")
        st.caption(f"Scored on the data in use ({len(scored)} pairs; prompts cut from the left to fit "
                   f"{s.score_max_length} tokens). "
                   "On its own training data this is training accuracy.")

st.subheader("Switch")
tab_data, tab_models = st.tabs(["Dataset", "Models"])
with tab_data:
    with st.form("home_data_form"):
        kind = st.radio("Source", ["Demo set", "Upload a file", "Local path", "Hub dataset id (online only)"], horizontal=True,
                        key="home_data_kind")
        upload = st.file_uploader(f"File (.jsonl, .jsonl.gz, .json, .parquet, .csv; at most {UPLOAD_LIMIT_MB} MB)",
                                  key="home_upload", max_upload_size=UPLOAD_LIMIT_MB)
        text = st.text_input("Local path or hub id", key="home_data_text", placeholder="/data/pairs.jsonl or Anthropic/hh-rlhf")
        rows = st.text_input("Rows (optional, 0-based 'start:end')", value=s.rows, key="home_rows",
                             help="work on part of a large set, e.g. 0:2000")
        columns = column_mapping("home")
        if st.form_submit_button("Use this data"):
            try:
                dataclasses.replace(s, rows=rows.strip())  # refuses bad rows before anything is saved
                column_map = column_map_of(**columns)
                if kind == "Demo set":
                    source = str(DEMO_PATH)
                elif kind == "Upload a file":
                    if upload is None:
                        raise DataError("no file chosen.", fix="choose a file above, then press the button.")
                    source = str(save_upload(upload.name, upload.getvalue(), Path(s.project_dir) / "uploads",
                                             max_bytes=UPLOAD_LIMIT_MB * 2**20))
                else:
                    source = text.strip()
                with st.spinner("Checking the data"):
                    source = validate_data(source, rows.strip(), column_map, s.project_dir)
                update_settings(data=source, rows=rows.strip())
                st.rerun()
            except (DataError, ValueError) as exc:  # the data in use stays as it was
                show_error(exc, "Not switched")
with tab_models:
    with st.form("home_models_form"):
        policy = st.text_input("Policy: model id or directory", value=s.policy, key="home_policy")
        reward_model = st.text_input("Reward model: checkpoint directory (or a sequence-classification model id)",
                                     value=s.reward_model, key="home_rm")
        compare_rm = st.text_input("Second reward model for comparisons (optional)", value=s.compare_rm, key="home_compare_rm")
        score_max_length = st.number_input("Scoring limit: tokens per prompt + response (longer pairs are skipped)", 16,
                                           131_072, s.score_max_length, key="home_score_max_length",
                                           help="prompts are cut from the left to fit; a response longer than this is not scored")
        trust = st.toggle("Allow remote code (trust_remote_code)", value=s.trust_remote_code, key="home_trust_remote_code",
                          help="lets a model or checkpoint run Python code shipped with it (auto_map in its config). "
                               "Off: such a model is refused. Only for models whose files you trust.")
        if st.form_submit_button("Use these models"):
            problems = [f"no reward model at {md_code(p)} (give a checkpoint directory written by train-rm)"
                        for p in (reward_model.strip(), compare_rm.strip()) if p and not rm_exists(p)]
            # ids are looked up now (the local cache, the hub's reachability; no download): a typo fails here, at once
            names = [policy.strip()] + [p for p in (reward_model.strip(), compare_rm.strip())
                                        if p and rm_exists(p) and not Path(p).expanduser().exists()]
            problems += [md_escape(m) for m in map(model_problem, filter(None, names)) if m]
            if not policy.strip():
                problems.append("the policy is empty")
            if problems:
                st.error("Not switched: " + "; ".join(problems) + ".")
            else:
                update_settings(policy=policy.strip(), reward_model=reward_model.strip(), compare_rm=compare_rm.strip(),
                                score_max_length=int(score_max_length), trust_remote_code=bool(trust))
                st.rerun()
    show_trust_warning()
