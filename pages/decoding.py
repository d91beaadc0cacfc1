"""Controlled decoding: attack one pair. The policy proposes its top-k tokens, the RM scores each
candidate prefix, and the token maximising ∓reward + α·log π is taken; tokens appear as they are
decided, beside the plain policy's own continuation. Both are re-scored from their text and judged
against the pair (the variant's fluency against the plain policy's perplexity on the same prompt); either
can be sent to curation. The policy may speak as a persona (a system prompt only it reads); the RM scores
the pair's own prompt."""
import math

import pandas as pd
import streamlit as st

from pages._controls import decoding_controls, fluency_control
from pages._draw import fmt, md_escape, pair_label, proxy_figure, short, show_error, trace_figure, verdict_notes
from pages._keys import LAST_DECODED, TARGETS
from pages._loading import require_data, require_decoder
from pages._project import pending_variants, project_store, send_to_curation
from pages._routes import through_router
from pages._scoring import pair_rewards
from pages._settings import settings
from reform_engine.data import DataError
from reform_engine.decoding import DecodingConfig
from reform_engine.eta import ProgressClock, format_remaining
from reform_engine.influence import ScoredPair
from reform_engine.inversions import score_variant
from reform_engine.proxy import MIN_VARIANTS, partial_reward_proxy
from reform_engine.personas import label as persona_label
from reform_engine.store import too_short

DIRECTION_HELP = {"lower": "lower: start from a preferred pair; find a good-looking response the RM scores below the rejected one",
                  "raise": "raise: start from a rejected pair; find a bad response the RM scores above the chosen one"}

through_router()
st.title("Controlled decoding")
decoder = require_decoder()
_, pairs = require_data()
by_id = {p.pair_id: p for p in pairs}

# ------------------------------------------------------------------ what to attack, and how
targets = [p for p in st.session_state.get(TARGETS, []) if p in by_id]
use_queue = st.toggle(f"Only the pairs queued on Influential samples ({len(targets)})", value=bool(targets),
                      disabled=not targets, key="decoding_use_queue")
options = targets if use_queue and targets else list(by_id)
if st.session_state.get("decoding_pair") not in options:
    st.session_state.pop("decoding_pair", None)
pair_id = st.selectbox("Pair", options, format_func=lambda i: pair_label(by_id[i]), key="decoding_pair")
pair = by_id[pair_id]
try:
    r_chosen, r_rejected = pair_rewards(pair)
except DataError as exc:
    show_error(exc, "This pair cannot be scored")
    st.stop()
with st.expander(f"The pair · r+ = {r_chosen:+.3f} · r− = {r_rejected:+.3f}", expanded=False):
    st.markdown("**Prompt**")
    st.code(pair.prompt_text.strip(), language=None, wrap_lines=True)
    c1, c2 = st.columns(2)
    c1.markdown(f"**Chosen** (r+ = {r_chosen:+.3f})")
    c1.code(pair.chosen, language=None, wrap_lines=True)
    c2.markdown(f"**Rejected** (r− = {r_rejected:+.3f})")
    c2.code(pair.rejected, language=None, wrap_lines=True)

direction = st.radio("Direction", ["lower", "raise"], format_func=lambda d: DIRECTION_HELP[d], key="decoding_direction")
config, seed = decoding_controls("decoding", direction, persona=True)
c1, c2 = st.columns([2, 1])
compare = c1.checkbox("Also decode the plain policy (greedy, no RM)", value=True, key="decoding_compare",
                      help="its perplexity is the fluency reference either way; unticked, it is computed without being shown")
verdict = fluency_control("decoding", c2)
run = st.button("Run", type="primary", key="decoding_run")

# ------------------------------------------------------------------ slots, filled live while decoding and from the last result after
left, right = st.columns(2)
left.markdown(f"**Controlled ({direction})**")
left_text, left_info = left.empty(), left.empty()
right.markdown("**Plain policy (greedy)**")
right_text, right_info = right.empty(), right.empty()
# The verdict, trace and hand-off of the last result are drawn into this one slot: a new run empties it
# before it decodes (else the old verdict and its "Send to curation" stay on screen until the run ends).
result_slot = st.empty() if run else st.container()  # a container otherwise: a rerun redraws it without a flicker


def live(text_slot, info_slot, limit: int):
    clock = ProgressClock()  # tokens left × time per token so far (at most: decoding may stop at EOS sooner)

    def draw(event) -> None:
        text_slot.code(event.text + ("" if event.done else " ▌"), language=None, wrap_lines=True)
        left = "" if event.done else format_remaining(clock.observe(event.record.step + 1, limit))
        info_slot.caption(f"step {event.record.step + 1}/{limit} · running reward {event.record.running_reward:+.3f}"
                          + (f" · {left} at most" if left else ""))
    clock.observe(0, limit)
    return draw


def show_verdict(x, what: str) -> None:
    """The verdict on one decoded text (the variant or the plain continuation), with its flags."""
    threshold, side = (x.r_rejected, "rejected r−") if x.direction == "lower" else (x.r_chosen, "chosen r+")
    relation = "below" if x.direction == "lower" else "above"
    crosses = f"The RM scores {what} {fmt(x.r_variant)}, {relation} the {side} = {fmt(threshold)} (by {x.margin:.3f})"
    if x.is_inversion:
        st.success(f"**True inversion.** {crosses}. It would add the pair "
                   + ("(variant ≻ rejected)." if x.direction == "lower" else "(chosen ≻ variant)."))
    elif x.margin > 0:
        why = "it is not fluent" if x.fluent is False else too_short(x.to_record(with_steps=False)) or "it is too short"
        st.error(f"**Not a true inversion**: {crosses}, but {why}.")
    else:
        reason = "its text is empty" if not x.text.strip() else \
            f"the RM scores it {fmt(x.r_variant)}, not {relation} the {side} = {fmt(threshold)} (short by {-x.margin:.3f})"
        st.warning(f"**Not an inversion:** {reason}.")
    for note in verdict_notes(x.to_record(with_steps=False)):
        st.caption(note)


def send_button(x, label: str, key: str) -> None:
    """Send a decoded text to curation; a text too short to judge is refused here (and by the store)."""
    record = x.to_record()
    short_why = too_short(record)
    if st.button(label, key=key, disabled=bool(short_why), help=f"Cannot be sent: {short_why}." if short_why else None):
        try:
            n = send_to_curation(record)  # stored in the project database at once
            st.success(f"Queued for curation ({n} waiting).")
        except ValueError as exc:  # StoreError: e.g. an oversized text, or the database busy past its timeout
            show_error(exc, "Not queued")
    if short_why:
        st.caption(f"Cannot be sent to curation: {short_why}.")


if run:
    st.session_state.pop(LAST_DECODED, None)  # the new run replaces it, also when it fails
    try:
        result = decoder.decode([pair.prompt], config, on_event=live(left_text, left_info, config.max_new_tokens), seed=seed)[0]
        plain = None
        if compare:
            plain_config = DecodingConfig(k=1, alpha=0.0, temperature=0.0, max_new_tokens=config.max_new_tokens,
                                          direction=direction, stop_on_eos=config.stop_on_eos, persona=config.persona)
            plain = decoder.decode([pair.prompt], plain_config, on_event=live(right_text, right_info, config.max_new_tokens),
                                   seed=seed)[0]
            reference = plain.perplexity
        else:
            reference = decoder.plain_perplexities([pair.prompt], config.max_new_tokens, stop_on_eos=config.stop_on_eos,
                                                   persona=config.persona)[0] \
                if verdict.max_perplexity_ratio else float("nan")
        source = ScoredPair(pair, r_chosen, r_rejected, float("nan"), 0)
        limit = settings().score_max_length
        st.session_state[LAST_DECODED] = {
            "pair_id": pair.pair_id, "config": config, "seed": seed, "verdict": verdict,
            "variant": score_variant(decoder.rm, source, result, max_length=limit, plain_perplexity=reference, verdict=verdict),
            # its own reference: the plain continuation is as fluent as the policy's text gets
            "plain": score_variant(decoder.rm, source, plain, max_length=limit, plain_perplexity=plain.perplexity, verdict=verdict)
            if plain else None,
        }
    except (ValueError, DataError) as exc:  # a bad knob or a prompt that cannot fit: say so on the page
        show_error(exc, "Decoding did not run")

last = st.session_state.get(LAST_DECODED)
if not last:
    left_text.caption("Press Run: tokens appear here as they are decided.")
    st.stop()

# ------------------------------------------------------------------ the last result
v, plain, cfg = last["variant"], last["plain"], last["config"]
left_text.code(v.text or "(empty)", language=None, wrap_lines=True)
left_info.caption(f"{len([x for x in v.steps if not x.is_eos])} tokens · reward {fmt(v.r_variant)} · perplexity {v.perplexity:.2f} · "
                  f"persona {md_escape(persona_label(v.persona))}")
if plain is not None:
    right_text.code(plain.text or "(empty)", language=None, wrap_lines=True)
    right_info.caption(f"{len([x for x in plain.steps if not x.is_eos])} tokens · reward {fmt(plain.r_variant)} · "
                       f"perplexity {plain.perplexity:.2f}")
else:
    right_text.caption("not decoded")

with result_slot.container():
    if last["pair_id"] != pair.pair_id or cfg.direction != direction:
        st.caption(f"Showing the last run: pair {md_escape(last['pair_id'])}, direction {cfg.direction}.")
    show_verdict(v, "this variant")
    st.caption(f"persona={md_escape(persona_label(v.persona))} · k={cfg.k} · α={cfg.alpha} · temperature={cfg.temperature} · "
               f"max tokens={cfg.max_new_tokens} · seed={last['seed']} · path={decoder.path}. Rewards re-scored from the text, "
               "on the pair's own prompt (the RM never sees the persona).")

    # per-token trace and step inspector
    tokens = [x for x in v.steps if not x.is_eos]
    if st.session_state.get("decoding_step", 1) > len(v.steps):  # a shorter result than the last one inspected
        st.session_state.decoding_step = 1
    step = st.slider("Inspect step", 1, max(1, len(v.steps)), 1, key="decoding_step") if len(v.steps) > 1 else 1
    traces = [("controlled", [x.piece for x in tokens], [x.running_reward for x in tokens])]
    if plain is not None:
        p_tokens = [x for x in plain.steps if not x.is_eos]
        traces.append(("plain policy", [x.piece for x in p_tokens], [x.running_reward for x in p_tokens]))
    st.plotly_chart(trace_figure(traces, {"chosen r+": v.r_chosen, "rejected r−": v.r_rejected}, mark=step),
                    key="decoding_trace")
    rec = v.steps[step - 1]
    st.markdown(f"**Step {step}**: chose {md_escape(repr(rec.piece))}" + (" (end of text)" if rec.is_eos else ""))
    st.dataframe(pd.DataFrame([{"chosen": "✓" if j == rec.chosen else "", "token": repr(piece), "id": tid, "log π": lp,
                                "reward": r, "score": sc} for j, (piece, tid, lp, r, sc) in
                               enumerate(zip(rec.candidate_pieces, rec.candidate_ids, rec.logprobs, rec.rewards, rec.scores))]),
                 hide_index=True, key="decoding_candidates",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("log π", "reward", "score")})
    st.caption("score = " + ("−" if v.direction == "lower" else "+") + f"reward + α·log π (α = {cfg.alpha}); "
               + ("the highest score is taken." if cfg.temperature == 0 else f"sampled from softmax(score / {cfg.temperature})."))

    # ------------------------------------------------------------------ hand-off to curation
    send_button(v, "Send to curation", "decoding_send")
    if plain is not None:
        st.markdown("**The plain policy's own continuation**: it can cross the threshold too.")
        show_verdict(plain, "the plain continuation")
        send_button(plain, "Send the plain continuation to curation", "decoding_send_plain")
pending = pending_variants()
if pending:
    with st.expander(f"Waiting for curation ({len(pending)})"):
        st.dataframe(pd.DataFrame([{"pair": r["pair_id"], "direction": r["direction"], "inversion": r["is_inversion"],
                                    "margin": r["margin"] if not math.isnan(r["margin"]) else None, "text": short(r["text"], 120)}
                                   for r in pending]), hide_index=True, key="decoding_pending")

# ------------------------------------------------------------------ the seed's open check: is the partial reward a proxy?
with st.expander("Partial-reward proxy: every decoded variant, by step"):
    # on demand: it reads every variant's trace, which this page would otherwise re-read on each interaction
    if st.toggle("Compute it over the stored variants", key="decoding_proxy_show"):
        proxy = partial_reward_proxy(project_store())
        if proxy.empty:
            st.caption("No decoded variants stored yet: send some to curation, or generate them on the Curation page.")
        else:
            st.plotly_chart(proxy_figure(proxy), key="decoding_proxy")
            st.caption(f"Over {int(proxy['n'].iloc[0])} variants: the correlation between the reward of the response so far "
                       f"after i tokens and the reward of the finished text. A variant that ended before step i is not counted "
                       f"there; steps with fewer than {MIN_VARIANTS} variants have no correlation (hatched bars).")
