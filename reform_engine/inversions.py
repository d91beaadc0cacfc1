"""Variants from controlled decoding, the inversion filter, and the pairs they would add.

A variant y' decoded in direction "lower" from a preferred pair is a true mis-specification when
r(x, y') < r(x, y-): the RM puts a response written to look good below the known-bad one; it adds the
pair (y' preferred over y-). A variant y'' decoded in direction "raise" from a rejected pair is one
when r(x, y'') > r(x, y+); it adds (y+ preferred over y''). Variants are re-scored from their text
(as a retrained RM will see them), not taken from the decoding trace.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .data import DEMO_PATH, PreferencePair, added_pair, load_preferences, select_rows, write_jsonl
from .decoding import DIRECTIONS, DecodingConfig, DecodingResult, StepRecord
from .influence import STRATEGIES, ScoredPair, load_scored, rank_pairs, select_influential
from .models import DEFAULT_MODEL
from .runs import job_run
from .runtime import set_cpu_threads


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
    is_inversion: bool
    steps: list[StepRecord] = field(default_factory=list)

    def new_pair(self) -> PreferencePair | None:
        """The augmentation pair: (y', y-) for "lower", (y+, y'') for "raise"; None if not an inversion."""
        if not self.is_inversion or not self.text.strip():
            return None
        chosen, rejected = added_pair(self.direction, self.original_chosen, self.original_rejected, self.text)
        return PreferencePair(f"{self.pair_id}:{self.direction}", self.prompt, chosen, rejected)

    def to_record(self, with_steps: bool = True) -> dict:
        rec = dataclasses.asdict(self)
        if not with_steps:
            rec.pop("steps")
        pair = self.new_pair()
        rec["new_pair"] = pair.to_trl() if pair else None
        return rec


def make_variant(source: ScoredPair, result: DecodingResult, r_variant: float) -> Variant:
    ok, margin = check_inversion(result.direction, r_variant, source.r_chosen, source.r_rejected)
    return Variant(source.pair.pair_id, result.direction, source.pair.prompt, source.pair.chosen, source.pair.rejected,
                   result.text, r_variant, result.final_reward, source.r_chosen, source.r_rejected, margin,
                   result.perplexity, ok and bool(result.text.strip()), result.steps)


def score_variant(rm, source: ScoredPair, result: DecodingResult, *, max_length: int = 1024) -> Variant:
    """One decoded variant, re-scored from its text and judged against its pair (an empty text scores
    NaN and is never an inversion)."""
    from .scoring import encode, score_sequences

    r_variant = float("nan")
    if result.text.strip():
        enc = encode(rm.tokenizer, source.pair.prompt, result.text, max_length=max_length,
                     use_chat_template=rm.spec.use_chat_template)
        r_variant = float(score_sequences(rm, [enc.ids])[0])
    return make_variant(source, result, r_variant)


@dataclass
class VariantStats:
    n: int
    inversions: int
    success_rate: float              # inversions / n: how often the search finds a mis-specification
    mean_perplexity: float           # over all variants (readability; lower is more natural)
    mean_perplexity_inversions: float
    by_direction: dict = field(default_factory=dict)


def variant_stats(variants: Sequence[Variant]) -> VariantStats:
    def mean(xs):
        xs = [x for x in xs if math.isfinite(x)]
        return sum(xs) / len(xs) if xs else float("nan")

    inv = [v for v in variants if v.is_inversion]
    by_dir = {d: {"n": sum(v.direction == d for v in variants), "inversions": sum(v.is_inversion and v.direction == d for v in variants)}
              for d in DIRECTIONS}
    return VariantStats(len(variants), len(inv), len(inv) / len(variants) if variants else float("nan"),
                        mean([v.perplexity for v in variants]), mean([v.perplexity for v in inv]), by_dir)


@dataclass
class GenerateVariantsConfig:
    # what
    reward_model: str                       # checkpoint dir from train-rm
    data: str = str(DEMO_PATH)
    rows: str = ""
    skip_invalid: bool = True
    fraction: float = 0.05                  # influential share to attack
    strategy: str = "lowest_loss"           # lowest_loss | random | highest_loss
    directions: str = "both"                # lower | raise | both
    scored: str = ""                        # scored.jsonl of an 'influential' run on the same data: skips re-scoring
    max_length: int = 1024                  # tokens when scoring pairs and variants (prompt cut from the left)
    # policies
    policy: str = DEFAULT_MODEL             # proposes tokens ("aligned" policy for direction lower)
    raise_policy: str = ""                  # a separate "misaligned" policy for direction raise; '' = policy
    # decoding knobs (see decoding.DecodingConfig)
    k: int = 5
    alpha: float = 1.0
    temperature: float = 0.0
    max_new_tokens: int = 64
    stop_on_eos: bool = True
    seed: int = 0
    batch_size: int = 4                     # prompts decoded together
    # runtime
    device: str = "auto"
    dtype: str = "float32"
    threads: int = 0
    trust_remote_code: bool = False         # let code shipped with the models run (auto_map): only for models you trust

    def __post_init__(self):
        if self.directions not in DIRECTIONS + ("both",):
            raise ValueError(f"directions={self.directions!r}; use 'lower', 'raise' or 'both'")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r}; use one of {STRATEGIES}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.decoding("lower")  # validates the knobs now, not halfway through a run

    def decoding(self, direction: str) -> DecodingConfig:
        return DecodingConfig(k=self.k, alpha=self.alpha, temperature=self.temperature, max_new_tokens=self.max_new_tokens,
                              direction=direction, seed=self.seed, stop_on_eos=self.stop_on_eos)


@dataclass
class GenerateVariantsResult:
    variants_path: str                      # every variant with its step records (JSONL)
    augment_path: str                       # the new pairs of the inversions, TRL format (JSONL)
    stats: VariantStats
    n_influential: int
    tokens: int
    seconds: float
    cpu_seconds: float = 0.0                # CPU time of the job's process, all its threads


def generate_variants(config: GenerateVariantsConfig, run_dir: str | Path) -> GenerateVariantsResult:
    """Score the data, select influential pairs, decode variants in both directions, filter inversions."""
    from .decoding import ControlledDecoder
    from .models import load_causal_lm, load_tokenizer
    from .reward_model import load_reward_model
    from .scoring import encode, score_pairs, score_sequences

    with job_run(run_dir, config, "scoring training pairs") as run:
        set_cpu_threads(config.threads)
        start, cpu_start = time.perf_counter(), time.process_time()
        pairs = select_rows(load_preferences(config.data, skip_invalid=config.skip_invalid).pairs, config.rows)
        rm = load_reward_model(config.reward_model, device=config.device, dtype=config.dtype,
                               trust_remote_code=config.trust_remote_code)
        if config.scored:
            scored = load_scored(pairs, config.scored)
        else:
            scores = score_pairs(rm, pairs, max_length=config.max_length, skip_too_long=True)
            if scores.skipped:
                run.log(f"{len(scores.skipped)} pairs skipped: a response longer than max_length={config.max_length} tokens")
            scored = rank_pairs(pairs, scores)
        chosen = select_influential(scored, config.fraction, config.strategy, config.seed)
        directions = DIRECTIONS if config.directions == "both" else (config.directions,)
        jobs = [(d, i, s) for d in directions for i, s in enumerate(chosen)]
        run.log(f"{len(chosen)} influential pairs of {len(scored)}; decoding {len(jobs)} variants")
        decoders = {}
        variants: list[Variant] = []
        tokens = 0
        for d in directions:
            name = config.raise_policy if d == "raise" and config.raise_policy else config.policy
            if name not in decoders:
                trust = config.trust_remote_code
                decoders[name] = ControlledDecoder(load_causal_lm(name, device=config.device, dtype=config.dtype,
                                                                  trust_remote_code=trust),
                                                   load_tokenizer(name, trust_remote_code=trust), rm)
            todo = sorted([(i, s) for dd, i, s in jobs if dd == d], key=lambda t: len(t[1].pair.prompt_text))
            for b in range(0, len(todo), config.batch_size):
                batch = todo[b:b + config.batch_size]
                results = decoders[name].decode([s.pair.prompt for _, s in batch], config.decoding(d),
                                                sample_ids=[i for i, _ in batch])
                # re-score every non-empty variant from its text, in one RM call per batch
                readable = [j for j, res in enumerate(results) if res.text.strip()]
                seqs = [encode(rm.tokenizer, batch[j][1].pair.prompt, results[j].text, max_length=config.max_length,
                               use_chat_template=rm.spec.use_chat_template).ids for j in readable]
                fresh = dict(zip(readable, score_sequences(rm, seqs).tolist())) if seqs else {}
                for j, ((_, s), res) in enumerate(zip(batch, results)):
                    tokens += len(res.token_ids)
                    variants.append(make_variant(s, res, fresh.get(j, float("nan"))))
                run.progress(len(variants), len(jobs), message=f"{len(variants)}/{len(jobs)} variants, "
                             f"{sum(v.is_inversion for v in variants)} inversions")
        write_jsonl(run.path / "variants.jsonl", [v.to_record() for v in variants])
        write_jsonl(run.path / "augment.jsonl", [v.new_pair().to_trl() for v in variants if v.new_pair()])
        result = GenerateVariantsResult(str(run.path / "variants.jsonl"), str(run.path / "augment.jsonl"), variant_stats(variants),
                                        len(chosen), tokens, time.perf_counter() - start,
                                        time.process_time() - cpu_start)
        run.write_metrics(result)
        run.set_status("succeeded", progress=1.0, message=f"{result.stats.inversions} inversions of {result.stats.n} variants")
        return result
