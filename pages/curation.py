"""Curation: the queue of inversions to review. The original pair and the variant side by side with
their rewards and the variant's per-token trace; approve, reject, or edit then approve, with a note.
Every decision is written to the project database the moment it is made, so any number of tabs can
review at once, each decision stored with the reviewer named in the sidebar. Batch generation over the
influential set runs from here as a background job; the approved pairs export as a TRL file and every
decision ever made as a log."""
import dataclasses
import math
from pathlib import Path

import pandas as pd
import streamlit as st

from pages._controls import decoding_controls, fluency_control, persona_control
from pages._draw import flash, fmt, md_code, md_escape, short, show_error, show_flash, trace_figure, verdict_notes
from pages._jobs import live_jobs, start_from_page
from pages._project import project_store, reviewer
from pages._routes import store_page
from pages._scoring import scores_for_job
from pages._settings import rm_exists, settings
from reform_engine.appropriateness import SOURCES, AppropriatenessConfig
from reform_engine.curation import (EXPORT_FORMATS, counts, decision_for, export_approved, export_decision_log, new_pair, queue,
                                    step_trace)
from reform_engine.data import hh_text
from reform_engine.decoding import DIRECTIONS
from reform_engine.influence import STRATEGIES
from reform_engine.inversions import GenerateVariantsConfig, verdict_flags
from reform_engine.personas import DEFAULT_PERSONAS
from reform_engine.personas import label as persona_label

FLASH_KEY = "curation_flash"
ERROR_KEY = "curation_error"
STATUS_FILTERS = {"pending": "waiting for a decision", "approved": "approved", "rejected": "rejected", "all": "all"}


def decide(variant_id: int, action: str, shown_text: str, shown_decisions: int) -> None:
    """Write the decision at once (a button callback, so it runs before the page is drawn again)."""
    store = project_store()
    if not reviewer():
        st.session_state[ERROR_KEY] = ValueError("no reviewer name: give yours in the sidebar, it is stored with the decision")
        return
    decision, edited = decision_for(shown_text, st.session_state.get("curation_text", shown_text)) if action == "approve" \
        else ("reject", None)
    try:
        now = store.get_variant(variant_id)
        store.decide(variant_id, decision, edited, st.session_state.get("curation_note", ""), reviewer=reviewer())
    except ValueError as exc:  # StoreError: an empty or oversized text, an edit equal to the other response
        st.session_state[ERROR_KEY] = exc
        return
    word = {"approve": "Approved", "edit": "Approved (edited)", "reject": "Rejected"}[decision]
    meanwhile = len(now["history"]) > shown_decisions
    flash(FLASH_KEY, f"{word} variant #{variant_id} as {md_escape(reviewer())}." + (
        f" It had been {now['status']} meanwhile in another tab; this decision is now the latest." if meanwhile else ""))


def appropriate_badge(flag) -> str:
    """A stored appropriateness verdict as a table cell: yes, NO, or a dash when never checked."""
    return "—" if flag is None or pd.isna(flag) else "yes" if flag else "NO"


def export_panel(about: str, export, noun: str, keys: tuple[str, str, str, str], button: str, download: str,
                 disabled: bool = False) -> bool:
    """A format choice and a button that writes ``export(store, <project>/exports, format)`` -> (path, rows),
    then the last file it wrote, offered for download. ``keys``: the format radio's, the button's, the
    session's record of the last file, the download button's. -> whether a file is offered."""
    folder = Path(settings().project_dir) / "exports"
    format_key, button_key, last_key, download_key = keys
    c1, c2 = st.columns([1, 3])
    export_format = c1.radio("Format", EXPORT_FORMATS, horizontal=True, key=format_key)
    c2.caption(f"{about} Written to `{folder}`.")
    if st.button(button, key=button_key, disabled=disabled):
        try:
            path, rows = export(project_store(), folder, export_format)
            st.session_state[last_key] = (str(path), rows)
        except (ValueError, OSError) as exc:
            show_error(exc, "Not exported")
    last = st.session_state.get(last_key)
    if not (last and Path(last[0]).is_file()):
        return False
    st.success(f"{last[1]} {noun} written to {md_code(last[0])}.")
    st.download_button(download, Path(last[0]).read_bytes(), file_name=Path(last[0]).name, key=download_key)
    return True


s, store = store_page("Curation")

n = counts(store)
c = st.columns(4)
c[0].metric("Waiting", n["pending"])
c[1].metric("Approved", n["approved"])
c[2].metric("Rejected", n["rejected"])
c[3].caption("The queue holds the true inversions of the batch jobs (past the threshold and fluent) and every variant sent "
             "from Controlled decoding. Approved inversions become training pairs on Retrain & evaluate.")
show_flash(FLASH_KEY)
show_error(st.session_state.pop(ERROR_KEY, None), "Not stored")

# ------------------------------------------------------------------ batch generation (a background job)
running = live_jobs("curation", kinds=["variants"])
with st.expander("Generate variants over the influential set (background job)", expanded=not running and n["pending"] == 0):
    if not rm_exists(s.reward_model):
        st.warning(f"No reward model at {md_code(s.reward_model)} yet: train one on the Home page first.")
    st.caption(f"Controlled decoding from the influential pairs of the data in use ({md_code(short(s.data, 60))}"
               + (f", rows {md_code(s.rows)}" if s.rows else "")
               + f") with the policy {md_code(short(s.policy, 40))} and the reward model "
               "in use; the inversions it finds join the queue when it ends.")
    c = st.columns(3)
    percent = c[0].number_input("p: share of the pairs, %", 0.1, 100.0, 5.0, step=1.0, key="curation_gen_p")
    strategy = c[1].selectbox("Selection", list(STRATEGIES), key="curation_gen_strategy",
                              help="REFORM attacks the lowest-loss pairs; random and highest-loss for comparison")
    directions = c[2].selectbox("Directions", ["both", *DIRECTIONS], key="curation_gen_directions")
    decoding, seed = decoding_controls("curation_gen")
    c = st.columns(3)
    verdict = fluency_control("curation_gen", c[0])
    appropriateness = c[1].selectbox("Appropriateness of 'lower' variants", SOURCES, key="curation_gen_appropriateness",
                                     help="flags a 'lower' variant (it becomes the chosen side) that complies with a harmful "
                                          "request: rules (refusal markers vs compliance signals), judge (an independent RM "
                                          "must score it at least as high as the pair's rejected response) or both")
    judge_rm = c[2].text_input("Judge RM (for judge / both)", key="curation_gen_judge",
                               help="a checkpoint trained apart, never the reward model being fixed")
    c = st.columns(3)
    per_pair = c[0].number_input("Variants per pair and direction", 1, 16, 1, key="curation_gen_per_pair",
                                 help=next(f.metadata["help"] for f in dataclasses.fields(GenerateVariantsConfig)
                                           if f.name == "variants_per_pair"))
    personas = {d: persona_control(f"curation_gen_{d}_persona", DEFAULT_PERSONAS[d], f"Persona for {d} ({role} responses)", c[i + 1])
                for i, (d, role) in enumerate((("lower", "chosen"), ("raise", "rejected")))}
    if st.button("Start generating", type="primary", key="curation_generate", disabled=not rm_exists(s.reward_model)):
        try:
            config = GenerateVariantsConfig(reward_model=s.reward_model, data=s.data, rows=s.rows, fraction=float(percent) / 100,
                                            strategy=strategy, directions=directions, policy=s.policy, decoding=decoding,
                                            lower_persona=personas["lower"], raise_persona=personas["raise"],
                                            variants_per_pair=int(per_pair),
                                            max_length=s.score_max_length, scored=scores_for_job(), verdict=verdict,
                                            appropriateness=AppropriatenessConfig(source=appropriateness, judge_rm=judge_rm),
                                            runtime=s.runtime(seed))
            start_from_page(store, "variants", config, FLASH_KEY,
                            message=lambda i: f"Started job #{i}: its inversions join the queue when it ends.")
        except ValueError as exc:  # a bad knob (DecodingConfig), or the job could not start (StoreError)
            show_error(exc, "Not started")

# ------------------------------------------------------------------ the queue
st.subheader("Queue")
c1, c2 = st.columns([1, 2])
status = c1.selectbox("Show", list(STATUS_FILTERS), format_func=STATUS_FILTERS.get, key="curation_status")
every = c2.toggle("Also the non-inversions of batch jobs", key="curation_every",
                  help="the not-fluent ones among them too; they can only be rejected")
hide = c2.toggle("Hide inappropriate", key="curation_hide_inappropriate",
                 help="leave out the 'lower' variants judged to comply with a harmful request (those never checked stay)")
frame = queue(store, None if status == "all" else status, every_variant=every, hide_inappropriate=hide)
if frame.empty:
    st.info("Nothing here. Generate variants above, or send one from Controlled decoding." if status == "pending"
            else "No variants with this status.")
else:
    table = pd.DataFrame({"id": frame["id"], "pair": frame["pair_id"], "direction": frame["direction"],
                          "persona": [persona_label(p) if d in DIRECTIONS else "" for p, d in zip(frame["persona"], frame["direction"])],
                          "inversion": frame["is_inversion"],
                          "appropriate": [appropriate_badge(a) for a in frame["appropriate"]],
                          "flags": [", ".join(verdict_flags(r)) for r in frame.to_dict("records")],
                          "margin": frame["margin"], "r variant": frame["r_variant"],
                          "perplexity": frame["perplexity"], "status": frame["status"],
                          "job": [None if pd.isna(j) else int(j) for j in frame["job_id"]],
                          "text": [short(t, 100) for t in frame["text"]]})
    event = st.dataframe(table, hide_index=True, key="curation_table", on_select="rerun", selection_mode="single-row",
                         column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("margin", "r variant", "perplexity")})
    ids = [int(i) for i in frame["id"]]
    ticked = [ids[i] for i in (event.selection.rows if event is not None else []) if i < len(ids)]
    if ticked and ticked != st.session_state.get("curation_ticked"):  # a row ticked in the table picks that variant
        st.session_state.curation_variant = ticked[0]
    st.session_state.curation_ticked = ticked
    if st.session_state.get("curation_variant") not in ids:
        st.session_state.pop("curation_variant", None)
    label = {int(r["id"]): f"#{r['id']} · {r['pair_id']} · {r['direction']}" for _, r in frame.iterrows()}  # no status: it changes
    vid = st.selectbox("Variant", ids, format_func=label.get, key="curation_variant")
    v = store.get_variant(vid)

    if st.session_state.get("curation_shown") != vid:  # a new variant: the editor starts from its current text
        st.session_state.curation_shown = vid
        st.session_state.curation_text = v["edited_text"] if v["decision"] == "edit" else v["text"]
        st.session_state.curation_note = ""

    # the original pair and the variant, side by side
    st.markdown("**Prompt**")
    st.code(hh_text(v["prompt"]).strip(), language=None, wrap_lines=True)
    c1, c2, c3 = st.columns(3)
    c1.markdown(f"**Chosen** · r+ = {fmt(v['r_chosen'])}")
    c1.code(v["original_chosen"], language=None, wrap_lines=True)
    c2.markdown(f"**Rejected** · r− = {fmt(v['r_rejected'])}")
    c2.code(v["original_rejected"], language=None, wrap_lines=True)
    c3.markdown(f"**Variant** ({md_escape(v['direction'])}"
                + (f", persona {md_escape(persona_label(v['persona']))}" if v["direction"] in DIRECTIONS else "")
                + f") · r = {fmt(v['r_variant'])}"
                + (f" · perplexity {v['perplexity']:.2f}" if v["perplexity"] is not None and math.isfinite(v["perplexity"]) else ""))
    c3.code(v["text"] or "(empty)", language=None, wrap_lines=True)
    if v["direction"] == "imported":
        st.caption("Imported from a TRL file: it stands for its pair as given.")
    elif v["direction"] == "adv-rm":
        found_by = f"an Adv-RM attack (job #{int(v['job_id'])})" if v["job_id"] else "an Adv-RM attack"
        st.caption(f"Found by {found_by}: the target RM scores it {fmt(v['margin'])} against the chosen r+ while its penalty "
                   "RMs disagree; its z-scores, judge score and rule flags are on Adversarial attack.")
    elif v["is_inversion"]:
        side = "rejected r−" if v["direction"] == "lower" else "chosen r+"
        st.caption(f"A true inversion: the RM scores the variant {'below' if v['direction'] == 'lower' else 'above'} the {side}, "
                   f"by {fmt(v['margin'])}.")
    elif v["margin"] is not None and v["margin"] > 0:
        st.error(f"Not a true inversion: the RM scores it past the threshold (by {fmt(v['margin'])}), but "
                 + ("the policy finds it not fluent" if v["fluent"] is False else "it is too short to judge")
                 + ". It adds no pair and can only be rejected.")
    else:
        st.warning("Not an inversion: the RM orders this variant as it should, so it adds no pair. It can only be rejected.")
    for note in verdict_notes(v):
        if note.startswith("**"):  # a flag raised (not fluent, truncated), not a flag unknown
            st.warning(note)
        else:
            st.caption(note)
    if v.get("appropriate") is True:
        st.caption(f"Appropriate: {md_escape(v.get('appropriateness') or '')}")
    if v["is_inversion"]:
        chosen, rejected = new_pair(v)
        st.markdown("**It adds the pair** (as it stands now):")
        st.text(f"chosen = “{short(chosen, 140)}” ≻ rejected = “{short(rejected, 140)}”")

    pieces, rewards = step_trace(v["steps"])
    if rewards:
        st.plotly_chart(trace_figure([("variant", pieces, rewards)], {"chosen r+": v["r_chosen"], "rejected r−": v["r_rejected"]},
                                     title="Running reward while decoding", height=300, tick_labels=pieces), key="curation_trace")

    # the decision
    st.markdown(f"**Status: {md_escape(v['status'])}**"
                + (f" ({md_escape(v['decision'])}, note: {md_escape(repr(v['note']))})" if v["decision"] else ""))
    text = st.text_area("Variant text: edit it before approving if it needs it (the edit is stored, the original kept)",
                        key="curation_text", height=120, disabled=not v["is_inversion"])
    st.text_input("Note (optional: why)", key="curation_note")
    if v["is_inversion"] and decision_for(v["text"], text)[1] is not None:
        st.caption("The text is edited: approving stores the edited text.")
    # callbacks bound to the variant drawn here: a click counts even when, by the time it arrives, another tab's
    # decision has moved this variant out of the list being shown
    if not reviewer():
        st.warning("Give your name as **Reviewer** in the sidebar first: it is stored with every decision.")
    c1, c2, _ = st.columns([1, 1, 4])
    c1.button("Approve", type="primary", key="curation_approve", disabled=not v["is_inversion"] or not reviewer(),
              on_click=decide, args=(vid, "approve", v["text"], len(v["history"])))
    c2.button("Reject", key="curation_reject", disabled=not reviewer(), on_click=decide,
              args=(vid, "reject", v["text"], len(v["history"])))
    if v["history"]:
        with st.expander(f"Decision history ({len(v['history'])})"):
            st.dataframe(pd.DataFrame(v["history"]), hide_index=True, key="curation_history")

# ------------------------------------------------------------------ export
st.subheader("Export the approved pairs (TRL)")
offered = export_panel("Rows of prompt messages, chosen and rejected, as TRL's RewardTrainer reads them; edited texts included.",
                       export_approved, "approved pair(s)", keys=("curation_export_format", "curation_export",
                                                                 "curation_last_export", "curation_download"),
                       button="Export", download="Download it", disabled=n["approved"] == 0)
if not offered and n["approved"] == 0:
    st.caption("Nothing approved yet.")

# ------------------------------------------------------------------ the decision log
st.subheader("Export the decision log")
export_panel("Every decision ever made, oldest first: approvals, rejections and edits (with the edited text), notes, "
             "reviewer and time (UTC), each with its variant and original pair.",
             export_decision_log, "decision(s)", keys=("curation_log_format", "curation_log_export", "curation_last_log",
                                                       "curation_log_download"),
             button="Export the log", download="Download the log")
