"""Variants from controlled decoding, the inversion filter, and the pairs they would add.

A variant y' decoded in direction "lower" from a preferred pair is a true mis-specification when
r(x, y') < r(x, y-): the RM puts a response written to look good below the known-bad one; it adds the
pair (y' preferred over y-). A variant y'' decoded in direction "raise" from a rejected pair is one
when r(x, y'') > r(x, y+); it adds (y+ preferred over y''). Variants are re-scored from their text
(as a retrained RM will see them), not taken from the decoding trace.

Crossing is not enough: a variant the policy itself finds far less likely than its own plain (greedy)
continuation of the same prompt is flagged "not fluent" and is no true inversion (VerdictConfig), nor is
one of a single token. One cut mid-sentence at the token limit is flagged "truncated" but still counts.

The policy proposing "lower" variants (future *chosen* responses) speaks as the aligned persona, the one
proposing "raise" variants (future *rejected* ones) as the compliant, misaligned one (personas.py); the
RM scores every variant on the pair's own prompt. Several variants per pair follow a fixed schedule
(GenerateVariantsConfig.decoding_for); a variant whose normalised text (``normalised``) equals an earlier
one of the same pair and direction is dropped before it is judged, and counted.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .appropriateness import AppropriatenessConfig, judge_appropriateness
from .configs import nested, setting
from .data import PreferencePair, added_pair, write_jsonl
from .decoding import DIRECTIONS, DecodingConfig, DecodingResult, StepRecord
from .influence import STRATEGIES, ScoredPair, check_selection, load_scored, rank_pairs, select_influential
from .models import DEFAULT_MODEL
from .personas import DEFAULT_PERSONAS, system_prompt
from .resume import Journal
from .runs import RunDir, job
from .runtime import Runtime
from .scoring import ScoringJob
from .store import MIN_TOKENS

JOURNAL = "decoded.journal.jsonl"   # the finished batches of a run that has not ended (resume.py)


SENTENCE_ENDS = ".!?…。！？"
CLOSERS = "\"'”’)]*»"


@dataclass
class VerdictConfig:
    max_perplexity_ratio: float = setting(
        20.0, "a variant whose perplexity under the policy is more than this many times that of the plain policy's own "
              "greedy continuation of the same prompt is flagged 'not fluent' and is no true inversion; 0 turns the flag "
              "off. 20: greedy text is the policy's likeliest (perplexity 1.3-3.5 for SmolLM2-135M on HH-RLHF dev prompts); "
              "the data's own human responses sit at a median 6-7x it (95th percentile 20-23x), default decoding (k=5, "
              "alpha=1) at 1-3x, and the issue's gibberish (63.75) at about 29x the median greedy 2.2, so 3x would flag "
              "most human-written text (benchmarks/RESULTS.md, calibrate_fluency.py)")

    def __post_init__(self):
        if not self.max_perplexity_ratio >= 0 or math.isinf(self.max_perplexity_ratio):
            raise ValueError(f"max_perplexity_ratio={self.max_perplexity_ratio!r}: use a finite ratio >= 1 (20 is the usual "
                             f"choice), or 0 to never flag a variant as not fluent")
        if 0 < self.max_perplexity_ratio < 1:
            raise ValueError(f"max_perplexity_ratio={self.max_perplexity_ratio!r} would flag text more fluent than the plain "
                             f"policy's own; use a ratio >= 1, or 0 to turn the flag off")

    def is_fluent(self, perplexity: float, plain_perplexity: float) -> bool | None:
        """Whether a text of ``perplexity`` reads as fluent next to the plain policy's ``plain_perplexity``
        on the same prompt; None when unknown (no reference, or the flag turned off)."""
        if not self.max_perplexity_ratio or not math.isfinite(plain_perplexity) or not math.isfinite(perplexity):
            return None
        return perplexity <= self.max_perplexity_ratio * plain_perplexity


def is_truncated(text: str, stopped: str) -> bool:
    """Cut mid-sentence at the token limit: no end-of-text token and no sentence punctuation at the end
    (closing quotes and brackets after it allowed)."""
    return stopped != "eos" and not text.rstrip().rstrip(CLOSERS).endswith(tuple(SENTENCE_ENDS))


def check_inversion(direction: str, r_variant: float, r_chosen: float, r_rejected: float) -> tuple[bool, float]:
    """-> (is a true inversion, margin by which it crosses; negative when it does not)."""
    if direction == "lower":
        margin = r_rejected - r_variant
    elif direction == "raise":
        margin = r_variant - r_chosen
    else:
        raise ValueError(f"direction={direction!r}; use one of {DIRECTIONS}")
    return margin > 0, margin


@dataclass
class Variant:
    pair_id: str
    direction: str
    prompt: tuple
    original_chosen: str
    original_rejected: str
    text: str
    r_variant: float                 # fresh score of the variant's text
    r_trace: float                   # running reward at the end of decoding (same ids; equal unless retokenization differs)
    r_chosen: float
    r_rejected: float
    margin: float                    # how far past the threshold (negative: not an inversion)
    perplexity: float
    is_inversion: bool               # the verdict: crosses the threshold, and is long enough and not flagged not fluent
    steps: list[StepRecord] = field(default_factory=list)
    plain_perplexity: float = float("nan")  # the plain policy's own greedy continuation of the prompt (fluency reference)
    fluent: bool | None = None       # None: unknown (no reference)
    truncated: bool | None = None    # cut mid-sentence at the token limit; None: unknown
    n_tokens: int | None = None      # tokens decoded (EOS not counted)
    appropriate: bool | None = None  # a "lower" variant that does not comply with a harmful request; None: not checked
    appropriateness: str | None = None  # the source and rule that decided it (appropriateness.py)
    persona: str | None = None       # the policy's persona while decoding (personas.py); None: not recorded
    index: int = 0                   # which of its pair's variants, in the schedule (GenerateVariantsConfig.decoding_for)
    k: int | None = None             # the schedule's k, temperature and sampling seed for this variant
    temperature: float | None = None
    seed: int | None = None

    def new_pair(self) -> PreferencePair | None:
        """The augmentation pair: (y', y-) for "lower", (y+, y'') for "raise"; None if not an inversion.
        Its id is ``pair:direction``, with ``:index`` for a pair's second and later variants."""
        if not self.is_inversion or not self.text.strip():
            return None
        chosen, rejected = added_pair(self.direction, self.original_chosen, self.original_rejected, self.text)
        suffix = f":{self.index}" if self.index else ""
        return PreferencePair(f"{self.pair_id}:{self.direction}{suffix}", self.prompt, chosen, rejected)

    @classmethod
    def from_record(cls, record: dict) -> "Variant":
        """The variant a to_record() (with its steps) was made from, read back from JSON."""
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in record.items() if k in names}
        return cls(**{**data, "prompt": tuple(data["prompt"]), "steps": [StepRecord(**s) for s in data.get("steps", [])]})

    def to_record(self, with_steps: bool = True) -> dict:
        rec = dataclasses.asdict(self)
        if not with_steps:
            rec.pop("steps")
        pair = self.new_pair()
        rec["new_pair"] = pair.to_trl() if pair else None
        return rec


def verdict_flags(record: dict) -> list[str]:
    """The warnings a reader should see beside a variant's verdict (a Variant.to_record() or a stored
    row): "not fluent", "truncated", and "fluency unknown" / "truncation unknown" for variants stored
    before these were checked (or without a plain-policy reference); "inappropriate"; and "ordered wrong" when
    the RM already scored the source pair's rejected response at or above its chosen one: then a crossing
    repeats that mistake rather than finding a new one (every lowest-loss pair is ordered right)."""
    flags = []
    fluent, truncated = _known(record.get("fluent")), _known(record.get("truncated"))
    if fluent is False:
        flags.append("not fluent")
    elif fluent is None and record.get("direction") in DIRECTIONS:
        flags.append("fluency unknown")
    if truncated:
        flags.append("truncated")
    elif truncated is None and record.get("direction") in DIRECTIONS:
        flags.append("truncation unknown")
    if _known(record.get("appropriate")) is False:
        flags.append("inappropriate")
    if ordered_wrong(record.get("direction"), record.get("r_chosen"), record.get("r_rejected")):
        flags.append("ordered wrong")
    return flags


def ordered_wrong(direction, r_chosen, r_rejected) -> bool:
    """Whether a REFORM variant comes from a source pair the RM already ordered wrong (r+ <= r-, both known)."""
    return direction in DIRECTIONS and all(isinstance(r, (int, float)) and math.isfinite(r) for r in (r_chosen, r_rejected)) \
        and r_chosen <= r_rejected


def _known(flag) -> bool | None:
    """A stored flag as True / False / None (unknown), whatever a frame made of it (NaN, numpy bool)."""
    return None if flag is None or (isinstance(flag, float) and math.isnan(flag)) else bool(flag)


def make_variant(source: ScoredPair, result: DecodingResult, r_variant: float, plain_perplexity: float = float("nan"),
                 verdict: VerdictConfig | None = None) -> Variant:
    """Judge a decoded variant: it is a true inversion when it crosses its pair's threshold, has at least
    MIN_TOKENS tokens and is not flagged not fluent against ``plain_perplexity`` (``verdict``'s ratio;
    without a reference its fluency is unknown and does not block). Truncation is flagged, not blocking."""
    verdict = verdict or VerdictConfig()
    crosses, margin = check_inversion(result.direction, r_variant, source.r_chosen, source.r_rejected)
    fluent = verdict.is_fluent(result.perplexity, plain_perplexity)
    n_tokens = len(result.token_ids)
    ok = crosses and bool(result.text.strip()) and n_tokens >= MIN_TOKENS and fluent is not False
    return Variant(source.pair.pair_id, result.direction, source.pair.prompt, source.pair.chosen, source.pair.rejected,
                   result.text, r_variant, result.final_reward, source.r_chosen, source.r_rejected, margin,
                   result.perplexity, ok, result.steps, plain_perplexity, fluent,
                   is_truncated(result.text, result.stopped), n_tokens, persona=result.persona)


def score_variant(rm, source: ScoredPair, result: DecodingResult, *, max_length: int = 1024,
                  plain_perplexity: float = float("nan"), verdict: VerdictConfig | None = None) -> Variant:
    """One decoded variant, re-scored from its text and judged against its pair (an empty text scores
    NaN and is never an inversion); ``plain_perplexity`` and ``verdict`` as in make_variant."""
    from .scoring import encode, score_sequences

    r_variant = float("nan")
    if result.text.strip():
        enc = encode(rm.tokenizer, source.pair.prompt, result.text, max_length=max_length,
                     use_chat_template=rm.spec.use_chat_template)
        r_variant = float(score_sequences(rm, [enc.ids])[0])
    return make_variant(source, result, r_variant, plain_perplexity, verdict)


@dataclass
class VariantStats:
    n: int
    inversions: int
    success_rate: float              # inversions / n: how often the search finds a mis-specification
    mean_perplexity: float           # over all variants (readability; lower is more natural)
    mean_perplexity_inversions: float
    by_direction: dict = field(default_factory=dict)
    not_fluent: int = 0              # variants past the threshold that the fluency flag kept from being inversions
    truncated: int = 0               # inversions cut mid-sentence at the token limit (kept, flagged)
    inappropriate: int = 0           # inversions judged inappropriate (kept, flagged; the filtered augment file leaves them out)
    duplicates: int = 0              # decoded variants dropped as near-duplicates before judging (not in n)
    ordered_wrong: int = 0           # inversions from a source pair the RM already ordered wrong (r+ <= r-): its old mistake again


def normalised(text: str) -> str:
    """What two variants must share to count as one: the text with case folded and every run of
    whitespace (including leading and trailing) collapsed to one space. Punctuation and wording count."""
    return " ".join(text.split()).casefold()


def variant_stats(variants: Sequence[Variant], duplicates: int = 0) -> VariantStats:
    def mean(xs):
        xs = [x for x in xs if math.isfinite(x)]
        return sum(xs) / len(xs) if xs else float("nan")

    inv = [v for v in variants if v.is_inversion]
    by_dir = {d: {"n": sum(v.direction == d for v in variants), "inversions": sum(v.is_inversion and v.direction == d for v in variants)}
              for d in DIRECTIONS}
    return VariantStats(len(variants), len(inv), len(inv) / len(variants) if variants else float("nan"),
                        mean([v.perplexity for v in variants]), mean([v.perplexity for v in inv]), by_dir,
                        sum(v.margin > 0 and v.fluent is False for v in variants), sum(bool(v.truncated) for v in inv),
                        sum(v.appropriate is False for v in inv), duplicates, sum(ordered_wrong(v.direction, v.r_chosen, v.r_rejected) for v in inv))


@dataclass
class GenerateVariantsConfig(ScoringJob):
    fraction: float = setting(0.05, "share of the pairs to decode from, in (0, 1]")
    strategy: str = setting("lowest_loss", "which pairs: lowest_loss (REFORM), random or highest_loss", choices=STRATEGIES)
    directions: str = setting("both", "lower: from preferred pairs; raise: from rejected pairs; both",
                              choices=DIRECTIONS + ("both",))
    scored: str = setting("", "scored.jsonl of an 'influential' run (or the app's scores) on the same data and rows: "
                              "skips scoring them again when its score_key.json matches this job's RM, data and max_length")
    # policies
    policy: str = setting(DEFAULT_MODEL, "the policy that proposes tokens (the 'aligned' one, for direction lower)")
    raise_policy: str = setting("", "a separate ('misaligned') policy for direction raise; '' = policy")
    lower_persona: str = setting(DEFAULT_PERSONAS["lower"], "the policy's persona for direction lower, whose variants become "
                                 "chosen responses: aligned (safe, refuses harmful requests), compliant, none, or custom:<text>")
    raise_persona: str = setting(DEFAULT_PERSONAS["raise"], "the policy's persona for direction raise, whose variants become "
                                 "rejected responses: compliant (complies with anything: the misaligned policy), aligned, none, "
                                 "or custom:<text>")
    decoding: DecodingConfig = nested(DecodingConfig, "how each variant is decoded (its direction and persona come from "
                                      "directions and the personas above)", set_by_job=("direction", "persona"))
    # several variants per pair: variant i (0, 1, ...) decodes with k + i*k_step, temperature + i*temperature_step, seed + i
    variants_per_pair: int = setting(1, "variants decoded per influential pair and direction; near-duplicates (same text up to "
                                        "case and spacing) are dropped and counted")
    temperature_step: float = setting(0.5, "variant i of a pair samples at decoding.temperature + i * this (variant 0 is "
                                           "decoded as configured)")
    k_step: int = setting(0, "variant i of a pair proposes decoding.k + i * this candidates per step")
    verdict: VerdictConfig = nested(VerdictConfig, "what makes a variant past its threshold a true inversion (fluency)")
    appropriateness: AppropriatenessConfig = nested(AppropriatenessConfig, "whether 'lower' variants still refuse a harmful "
                                                                           "request (a flag; augment_appropriate.jsonl leaves "
                                                                           "the flagged out)")
    batch_size: int = setting(4, "prompts decoded together")
    runtime: Runtime = nested(Runtime, "device, dtype, threads, seed (selection and sampling), remote-code leave")

    def __post_init__(self):
        super().__post_init__()
        if self.directions not in DIRECTIONS + ("both",):
            raise ValueError(f"directions={self.directions!r}; use 'lower', 'raise' or 'both'")
        check_selection(self.fraction, self.strategy)
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.appropriateness.check_independent(self.reward_model)
        for d in DIRECTIONS:
            try:
                system_prompt(self.persona_for(d))
            except ValueError as exc:
                raise ValueError(f"{d}_persona: {exc}") from None
        if not isinstance(self.variants_per_pair, int) or self.variants_per_pair < 1:
            raise ValueError(f"variants_per_pair={self.variants_per_pair!r}: decode at least 1 variant per pair (1 is the usual)")
        if not self.temperature_step >= 0 or math.isinf(self.temperature_step):
            raise ValueError(f"temperature_step={self.temperature_step!r}: use a finite step >= 0 (0 keeps one temperature)")
        if not isinstance(self.k_step, int) or self.k_step < 0:
            raise ValueError(f"k_step={self.k_step!r}: use a whole number >= 0 (0 keeps one k)")

    def persona_for(self, direction: str) -> str:
        return self.lower_persona if direction == "lower" else self.raise_persona

    def decoding_for(self, direction: str, index: int = 0) -> DecodingConfig:
        """How variant ``index`` of a pair is decoded in ``direction``: the schedule's k and temperature,
        that direction's persona. Its sampling seed is ``runtime.seed + index`` (seed_for)."""
        return dataclasses.replace(self.decoding, direction=direction, persona=self.persona_for(direction),
                                   k=self.decoding.k + index * self.k_step,
                                   temperature=self.decoding.temperature + index * self.temperature_step)

    def seed_for(self, index: int) -> int:
        return self.runtime.seed + index


@dataclass
class GenerateVariantsResult:
    variants_path: str                      # every variant with its step records (JSONL)
    augment_path: str                       # the new pairs of the inversions, TRL format (JSONL)
    stats: VariantStats
    n_influential: int
    tokens: int
    seconds: float
    cpu_seconds: float = 0.0                # CPU time of the job's process, all its threads
    appropriate_augment_path: str = ""      # the new pairs less those judged inappropriate ('' = not checked)


def reusable_scores(config: GenerateVariantsConfig, pairs: Sequence[PreferencePair], log) -> list[ScoredPair] | None:
    """The ranking of ``config.scored`` when it was made under this job's reward model, data, rows and
    scoring length (its score_key.json equals this job's key), else None (and ``log`` says why)."""
    from .score_cache import read_key, score_key

    if not config.scored:
        return None
    theirs = read_key(Path(config.scored).parent)
    if theirs is None:
        log(f"{config.scored} does not say which reward model and data it scored (no readable score_key.json): scoring again")
        return None
    ours = score_key(config.reward_model, config.data, config.rows, config.skip_invalid, config.max_length)
    if ours != theirs:
        log(f"{config.scored} was scored under another reward model, data, rows or max_length: scoring again")
        return None
    log(f"reusing the scores of {config.scored} (same reward model, data, rows and max_length)")
    return load_scored(pairs, config.scored)


@job("loading the reward model and the data", done=lambda r: f"{r.stats.inversions} inversions of {r.stats.n} variants"
     + (f" ({r.stats.not_fluent} more past the threshold but not fluent)" if r.stats.not_fluent else "")
     + (f", {r.stats.duplicates} near-duplicates dropped" if r.stats.duplicates else ""))
def generate_variants(config: GenerateVariantsConfig, run: RunDir) -> GenerateVariantsResult:
    """Score the data (unless ``config.scored`` holds its scores under the same key), select
    influential pairs, decode ``variants_per_pair`` variants per pair in each direction, drop
    near-duplicates, filter inversions."""
    from .decoding import ControlledDecoder
    from .models import load_causal_lm, load_tokenizer
    from .reward_model import load_reward_model
    from .scoring import score_pairs

    start, cpu_start, load = time.perf_counter(), time.process_time(), config.runtime.load_args()
    pairs = config.read_pairs()[1]
    rm = load_reward_model(config.reward_model, **load)
    run.set_status(message="checking the scores handed over" if config.scored else "scoring the data first")
    scored = reusable_scores(config, pairs, run.log)
    if scored is None:
        run.progress(0, 2 * len(pairs), message=f"scoring {len(pairs)} pairs first: 0/{2 * len(pairs)} responses")
        scores = score_pairs(rm, pairs, max_length=config.max_length, skip_too_long=True, on_progress=lambda done, total: run.progress(
            done, total, message=f"scoring {len(pairs)} pairs first: {done}/{total} responses"))
        if scores.skipped:
            run.log(f"{len(scores.skipped)} pairs skipped: a response longer than max_length={config.max_length} tokens")
        scored = rank_pairs(pairs, scores)
    chosen = select_influential(scored, config.fraction, config.strategy, config.runtime.seed)
    directions = DIRECTIONS if config.directions == "both" else (config.directions,)
    total = len(directions) * len(chosen) * config.variants_per_pair
    run.log(f"{len(chosen)} influential pairs of {len(scored)}; decoding {total} variants "
            f"({config.variants_per_pair} per pair and direction; personas: "
            + ", ".join(f"{d} {config.persona_for(d)}" for d in directions) + ")")
    run.progress(0, total, message=f"loading the policy; then 0/{total} variants")
    # batch by batch on disk: a run killed mid-way (a session's end) resumes from its last finished batch
    journal = Journal(run.path / JOURNAL, {"config": config, "pairs": [s.pair.pair_id for s in chosen]})
    if len(journal):
        run.log(f"resuming: {len(journal)} finished batches of an interrupted run of this config read back from {JOURNAL}")
    decoders: dict[str, ControlledDecoder] = {}
    variants: list[Variant] = []
    done, dropped = 0, 0
    for d in directions:
        name = config.raise_policy if d == "raise" and config.raise_policy else config.policy
        todo = sorted(enumerate(chosen), key=lambda t: len(t[1].pair.prompt_text))
        for b in range(0, len(todo), config.batch_size):
            unit = f"{d}:{b}"
            if unit in journal:
                kept, n_dropped = [Variant.from_record(r) for r in journal[unit]["variants"]], journal[unit]["dropped"]
            else:
                if name not in decoders:
                    decoders[name] = ControlledDecoder(load_causal_lm(name, **load),
                                                       load_tokenizer(name, trust_remote_code=load["trust_remote_code"]), rm)
                kept, n_dropped = _decode_batch(decoders[name], rm, todo[b:b + config.batch_size], config, d)
                journal.add(unit, {"variants": [v.to_record() for v in kept], "dropped": n_dropped})
            variants, dropped = variants + kept, dropped + n_dropped
            done += len(todo[b:b + config.batch_size]) * config.variants_per_pair
            run.progress(done, total, message=f"{done}/{total} variants, {sum(v.is_inversion for v in variants)} inversions"
                         + (f", {dropped} near-duplicates dropped" if dropped else ""))
    run.log(f"kept {len(variants)} variants; dropped {dropped} near-duplicates (the same text, up to case and spacing, as an "
            f"earlier variant of the same pair and direction)")
    filtered = ""
    if config.appropriateness.enabled:
        run.set_status(message=f"judging the appropriateness of {len(variants)} variants ({config.appropriateness.source})")
        check_appropriateness(variants, config.appropriateness, config.max_length, load)
        filtered = str(run.path / "augment_appropriate.jsonl")
        write_jsonl(filtered, [v.new_pair().to_trl() for v in variants if v.new_pair() and v.appropriate is not False])
    write_jsonl(run.path / "variants.jsonl", [v.to_record() for v in variants])
    write_jsonl(run.path / "augment.jsonl", [v.new_pair().to_trl() for v in variants if v.new_pair()])
    journal.remove()
    return GenerateVariantsResult(str(run.path / "variants.jsonl"), str(run.path / "augment.jsonl"),
                                  variant_stats(variants, dropped), len(chosen),
                                  sum(not step.is_eos for v in variants for step in v.steps),
                                  time.perf_counter() - start, time.process_time() - cpu_start, filtered)


def check_appropriateness(variants: Sequence[Variant], config: AppropriatenessConfig, max_length: int = 1024,
                          load: dict | None = None) -> None:
    """Set each variant's ``appropriate`` and ``appropriateness`` (in place) as ``config`` says; the
    judge RM, when the source needs it, is loaded here with ``load`` (Runtime.load_args())."""
    from .reward_model import load_reward_model

    needed = config.source in ("judge", "both") and any(config.applies(v.direction) and v.text.strip() for v in variants)
    judge = load_reward_model(config.judge_rm, **(load or {})) if needed else None
    verdicts = judge_appropriateness(config, [(v.direction, v.prompt, v.text, v.original_rejected) for v in variants],
                                     judge, max_length)
    for v, verdict in zip(variants, verdicts):
        v.appropriate, v.appropriateness = verdict.appropriate, verdict.reason or None


def _decode_batch(decoder, rm, batch: Sequence[tuple[int, ScoredPair]], config: GenerateVariantsConfig,
                  direction: str) -> tuple[list[Variant], int]:
    """Decode one batch of (row, scored pair) in ``direction``, ``variants_per_pair`` times on the
    schedule; drop each text that repeats an earlier one of its pair (``normalised``); re-score the
    rest from their text in one RM call and judge each against the plain policy's continuation of its
    prompt (under the same persona). -> (variants, near-duplicates dropped)."""
    from .scoring import encode, score_sequences

    prompts = [s.pair.prompt for _, s in batch]
    persona = config.persona_for(direction)
    plain = decoder.plain_perplexities(prompts, config.decoding.max_new_tokens, stop_on_eos=config.decoding.stop_on_eos,
                                       persona=persona) if config.verdict.max_perplexity_ratio else [float("nan")] * len(batch)
    seen: list[set[str]] = [set() for _ in batch]
    decoded, dropped = [], 0   # (j: row in the batch, index, decoding, seed, result)
    for index in range(config.variants_per_pair):
        decoding, seed = config.decoding_for(direction, index), config.seed_for(index)
        for j, res in enumerate(decoder.decode(prompts, decoding, sample_ids=[i for i, _ in batch], seed=seed)):
            if normalised(res.text) in seen[j]:
                dropped += 1
                continue
            seen[j].add(normalised(res.text))
            decoded.append((j, index, decoding, seed, res))
    readable = [n for n, (_, _, _, _, res) in enumerate(decoded) if res.text.strip()]
    seqs = [encode(rm.tokenizer, batch[decoded[n][0]][1].pair.prompt, decoded[n][4].text, max_length=config.max_length,
                   use_chat_template=rm.spec.use_chat_template).ids for n in readable]
    fresh = dict(zip(readable, score_sequences(rm, seqs).tolist())) if seqs else {}
    return [dataclasses.replace(make_variant(batch[j][1], res, fresh.get(n, float("nan")), plain[j], config.verdict),
                                index=index, k=decoding.k, temperature=decoding.temperature, seed=seed)
            for n, (j, index, decoding, seed, res) in enumerate(decoded)], dropped
