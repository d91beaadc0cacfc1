"""Home / setup: the policy, the reward model and the data in use, how good the RM is on that data
(with the length-only baselines), and the switches for all three. Without an RM, a base RM is
trained here as a background job."""
import dataclasses
from pathlib import Path

import streamlit as st

from pages._controls import column_mapping
from pages._draw import md_code, md_escape, short, show_error, show_trust_warning
from pages._jobs import live_jobs
from pages._loading import require_data, require_policy, require_rm, validate_data
from pages._project import project_store
from pages._routes import through_router
from pages._scoring import require_scored, show_scoring_skips
from pages._settings import UPLOAD_LIMIT_MB, is_demo_rm, rm_exists, settings, update_settings
from reform_engine.data import (DEMO_PATH, DataError, column_map_of, overlapping_rows, same_source, save_upload, select_rows,
                                split_rows)
from reform_engine.evaluation import pairwise_metrics
from reform_engine.jobs import ACTIVE, start_job
from reform_engine.reports import latest_job, log_tail
from reform_engine.retrain import held_out_rows
from reform_engine.reward_model import FINETUNE_MODES, RewardModelSpec
from reform_engine.training import TrainRewardConfig

BASE_RUN = "base-rm"    # <project>/runs/base-rm/checkpoint: the project's own RM, the default once it exists (pages/_settings.py)


def model_problem(name: str) -> str:
    """Why model ``name`` cannot be loaded here ('' if it may be), found without loading it."""
    from reform_engine.models import ModelError, check_model_name

    try:
        check_model_name(name)
    except ModelError as exc:
        return str(exc)
    return ""


def train_base_rm(s, loaded) -> None:
    """Train the project's own base RM on the data in use as a background job, with live progress: on
    its training rows, evaluated on the held-out rows; it becomes the RM in use when done."""
    store = project_store()
    run_dir = Path(s.project_dir) / "runs" / BASE_RUN
    job = latest_job(store, "train-rm", run_dir)
    if job is not None and job["state"] in ACTIVE:
        st.info("Training a base reward model in the background; it is used here as soon as it is done.")
        if live_jobs("home", job_ids=[job["id"]]):
            return
        job = store.get_job(job["id"])
    if job is not None and job["state"] == "succeeded" and rm_exists(str(run_dir / "checkpoint")) \
            and Path(s.reward_model).expanduser().resolve() != (run_dir / "checkpoint").resolve():
        if not st.session_state.get(f"home_adopted_{job['id']}"):  # once: the user may switch back afterwards
            st.session_state[f"home_adopted_{job['id']}"] = True
            update_settings(reward_model=str(Path(job["run_dir"]) / "checkpoint"))
            st.rerun()
    if job is not None and job["state"] in ("failed", "cancelled"):
        st.error(f"The last base training (job #{job['id']}) {job['state']}: {md_escape(job['message'])}")
        with st.expander("Its log"):
            st.code(log_tail(job) or "(nothing logged)", language=None)
    if is_demo_rm(s.reward_model):
        st.caption("Your own RM: train one on the data in use. It runs as a background job (you can leave this page) and "
                   "replaces the demo RM on every page when it is done.")
    else:
        st.info("There is no reward model yet. Train a base RM on the data in use: it runs as a background job "
                "(you can leave this page), and becomes the reward model of every page when it is done.")
    defaults = TrainRewardConfig()
    try:
        train_default, held_default = split_rows(loaded[1]) if loaded is not None else (s.rows, held_out_rows(s.rows))
    except ValueError:  # too few pairs to split: train on all of them, nothing held out
        train_default, held_default = s.rows, ""
    c = st.columns(4)
    backbone = c[0].text_input("Backbone (model id or directory)", value=s.policy, key="home_train_model",
                               help="the policy by default: decoding is fastest when policy and RM share their layers")
    rows = c[1].text_input("Training rows ('start:end', empty = all)", value=train_default, key="home_train_rows",
                           help="the pairs it learns from; by default the first 80% of the rows in use")
    held = c[2].text_input("Held-out rows ('start:end', empty = none)", value=held_default, key="home_train_held",
                           help="pairs it never sees, for its held-out accuracy (and later robustness); the rest of the rows")
    finetune = c[3].selectbox("Fine-tuning", list(FINETUNE_MODES), key="home_train_finetune")
    c = st.columns(4)
    lora_layers = c[0].number_input("Top N layers trained, by LoRA or top (0 = all)", 0, 200, defaults.model.lora_layers or 0,
                                    key="home_train_lora_layers")
    epochs = c[1].number_input("Epochs", 1, 100, defaults.epochs, key="home_train_epochs")
    max_steps = c[2].number_input("Max steps (0 = the epochs decide)", 0, 1_000_000, 0, key="home_train_max_steps")
    batch_size = c[3].number_input("Batch size (pairs)", 1, 512, defaults.batch_size, key="home_train_batch")
    c = st.columns(2)
    lr = c[0].number_input("Learning rate", 1e-7, 1.0, defaults.lr, step=1e-5, format="%.1e", key="home_train_lr")
    max_length = c[1].number_input("Max tokens per sequence", 16, 32_768, defaults.model.max_length, key="home_train_max_length")
    if st.button("Train a base reward model", type="primary", key="home_train"):
        try:
            rows, held = rows.strip(), held.strip()
            shared = overlapping_rows(rows, held) if held else ""
            if shared:
                raise ValueError(f"the held-out rows {held} overlap the training rows {rows or 'all'} (rows {shared}); "
                                 "give held-out rows outside the training rows, or leave them empty")
            problem = model_problem(backbone.strip() or s.policy)
            if problem:  # refused here, at once, rather than by the job process after its start-up
                raise ValueError(problem)
            model = RewardModelSpec(base_model=backbone.strip() or s.policy, finetune=finetune, lora_layers=int(lora_layers) or None,
                                    max_length=int(max_length))
            config = TrainRewardConfig(data=s.data, train_rows=rows, eval_data=s.data if held else "", eval_rows=held,
                                       model=model, epochs=int(epochs), max_steps=int(max_steps), batch_size=int(batch_size),
                                       lr=float(lr), runtime=s.runtime())
            start_job(store, "train-rm", config, run_dir=run_dir)
            st.rerun()
        except ValueError as exc:  # StoreError and DataError too: a bad knob, or a run still using the directory
            show_error(exc, "Not started")
    with st.expander("Or from a terminal"):
        st.code(f"python -m reform_engine train-rm --data {s.data} --run-dir {run_dir} --train-rows {train_default or ':'} "
                f"--eval-data {s.data} --eval-rows {held_default or ':'}", language="bash")


def rows_label(spec: str) -> str:
    return f"rows {md_code(spec)}" if spec else "all rows"


def accuracy_groups(s, scored) -> list[tuple[str, list]]:
    """The scored pairs split by what they are to the RM in use, each with the label its accuracy is shown
    under: held-out rows first (the honest figure), then its own training rows; or one group saying why
    the training rows are unknown."""
    from reform_engine.retrain import base_training_config

    recipe = base_training_config(s.reward_model)
    in_use = f"{rows_label(s.rows)} of the data in use"
    if recipe is None:
        return [(f"On {in_use} ({len(scored)} pairs). The RM's training rows are unknown (it was not trained here): "
                 "if these include them, this is training accuracy.", scored)]
    if not same_source(recipe.data, s.data):
        return [(f"On {in_use} ({len(scored)} pairs): held out, the RM was trained on other data "
                 f"({md_code(short(recipe.data, 60))}).", scored)]
    trained = {id(p) for p in select_rows([x.pair for x in scored], recipe.train_rows)}
    held = [x for x in scored if id(x.pair) not in trained]
    seen = [x for x in scored if id(x.pair) in trained]
    groups = []
    if held:
        groups.append((f"**Held-out accuracy**: {in_use} outside its training {rows_label(recipe.train_rows)} "
                       f"({len(held)} pairs it never saw).", held))
    if seen:
        groups.append((f"**Training accuracy**: its training {rows_label(recipe.train_rows)} ({len(seen)} pairs it learnt "
                       "from; this measures fit, not generalisation).", seen))
    return groups


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
if is_demo_rm(s.reward_model):
    st.caption("The demo RM shipped in `data/demo_rm/` (LoRA on SmolLM2, trained on rows 0:132 of the demo set; its card is "
               "in data/README.md) is in use until you train your own below or give another under Switch > Models.")
if not rm_exists(s.reward_model):
    train_base_rm(s, loaded)
elif rm is not None and loaded is not None:
    scored = require_scored(stop=False)
    if scored is not None:
        show_scoring_skips()
        import torch

        for label, group in accuracy_groups(s, scored):
            st.markdown(label)
            m = pairwise_metrics(torch.tensor([x.r_chosen for x in group]), torch.tensor([x.r_rejected for x in group]),
                                 [x.pair for x in group])
            cols = st.columns(4)
            cols[0].metric("RM accuracy", f"{m.accuracy:.1%}",
                           help="share of these pairs with r(x, y+) > r(x, y-); a tie counts one half")
            cols[1].metric("Always the longer", f"{m.longer_baseline:.1%}", help="a rule that prefers the longer response, on the same pairs")
            cols[2].metric("Always the shorter", f"{m.shorter_baseline:.1%}", help="a rule that prefers the shorter response, on the same pairs")
            cols[3].metric("Mean margin r+ − r−", f"{m.mean_margin:+.3f}")
            if m.accuracy <= max(m.longer_baseline, m.shorter_baseline):
                st.warning("The RM does not beat a length-only rule on these pairs: it has learned little beyond length.")
        st.caption(f"Prompts cut from the left to fit {s.score_max_length} tokens.")
if rm_exists(s.reward_model) and is_demo_rm(s.reward_model):
    with st.expander("Train your own reward model"):
        train_base_rm(s, loaded)

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
