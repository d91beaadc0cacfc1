"""Home / setup: the policy, the reward model and the data in use, how good the RM is on that data
(with the length-only baselines), and the switches for all three."""
import streamlit as st

from pages._shared import (SCORE_MAX_LENGTH, UPLOAD_LIMIT_MB, require, require_data, require_policy, require_rm,
                           rm_exists, scoring_task, settings, show_error, update_settings)
from reform_engine.data import DEMO_PATH, DataError, save_upload
from reform_engine.evaluation import pairwise_metrics

st.title("REFORM workbench")
st.write("Find where your reward model is wrong, curate the evidence, and retrain it (REFORM, arXiv 2507.06419): "
         "rank the training pairs by loss, search for inversions with reward-guided decoding, and inspect any "
         "response token by token.")
s = settings()

st.subheader("In use")
c_policy, c_rm, c_data = st.columns(3)
with c_policy:
    st.markdown(f"**Policy** (proposes tokens)  \n`{s.policy}`")
    if require_policy(stop=False) is not None:
        st.caption("loaded")
with c_rm:
    st.markdown(f"**Reward model**  \n`{s.reward_model or 'none'}`")
    rm = require_rm(stop=False)
    if rm is not None:
        st.caption(f"loaded · {'LoRA' if rm.spec.finetune == 'lora' else rm.spec.finetune} on `{rm.spec.base_model}`")
with c_data:
    st.markdown(f"**Data**  \n`{s.data}`" + (f" rows `{s.rows}`" if s.rows else ""))
    loaded = require_data(stop=False)

if loaded is not None:
    data, pairs = loaded
    cols = st.columns(4)
    cols[0].metric("Pairs", len(pairs))
    cols[1].metric("Multi-turn dialogues", sum(len(p.prompt) > 1 for p in pairs))
    cols[2].metric("Chosen is longer", f"{sum(len(p.chosen) > len(p.rejected) for p in pairs) / len(pairs):.0%}")
    cols[3].metric("Invalid rows skipped", len(data.report.skipped))

st.subheader("Reward model on this data")
if not rm_exists(s.reward_model):
    st.info("There is no reward model yet. Train a base RM on this data, then come back.")
    # ------------------------------------------------------------------------------------------------
    # TODO(issue 6, jobs): "Train base RM" as a background job with live progress, once jobs.py lands:
    #   job = start_job(Store(default_store_path()), "train-rm", TrainRewardConfig(data=s.data, ...),
    #                   run_dir=<project_dir>/runs/base-rm)
    #   then a st.fragment(run_every=2) panel that calls refresh_job(store, job) and draws its progress,
    #   with cancel_job(store, job) behind a button; on success the RM path below is the checkpoint.
    # ------------------------------------------------------------------------------------------------
    st.code(f"python -m reform_engine train-rm --data {s.data} --run-dir {s.project_dir}/runs/base-rm", language="bash")
elif rm is not None and loaded is not None:
    scored = require(scoring_task(), "Scoring the data with the reward model", stop=False)
    if scored is not None:
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
        st.caption(f"Scored on the data in use (prompts cut from the left to {SCORE_MAX_LENGTH} tokens). "
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
        if st.form_submit_button("Use this data"):
            try:
                from reform_engine.data import parse_rows

                parse_rows(rows.strip())
                if kind == "Demo set":
                    source = str(DEMO_PATH)
                elif kind == "Upload a file":
                    if upload is None:
                        raise DataError("no file chosen.", fix="choose a file above, then press the button.")
                    from pathlib import Path
                    source = str(save_upload(upload.name, upload.getvalue(), Path(s.project_dir) / "uploads",
                                             max_bytes=UPLOAD_LIMIT_MB * 2**20))
                else:
                    source = text.strip()
                    if not source:
                        raise DataError("no path or id given.", fix="type a local file path or a hub dataset id.")
                update_settings(data=source, rows=rows.strip())
                st.rerun()
            except (DataError, ValueError) as exc:
                show_error(exc)
with tab_models:
    with st.form("home_models_form"):
        policy = st.text_input("Policy: model id or directory", value=s.policy, key="home_policy")
        reward_model = st.text_input("Reward model: checkpoint directory (or a sequence-classification model id)",
                                     value=s.reward_model, key="home_rm")
        compare_rm = st.text_input("Second reward model for comparisons (optional)", value=s.compare_rm, key="home_compare_rm")
        if st.form_submit_button("Use these models"):
            problems = [f"no reward model at `{p}`" for p in (reward_model.strip(), compare_rm.strip()) if p and not rm_exists(p)]
            if not policy.strip():
                problems.append("the policy is empty")
            if problems:
                st.error("Not switched: " + "; ".join(problems) + ". Give a checkpoint directory written by train-rm.")
            else:
                update_settings(policy=policy.strip(), reward_model=reward_model.strip(), compare_rm=compare_rm.strip())
                st.rerun()
