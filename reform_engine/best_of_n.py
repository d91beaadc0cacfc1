"""Downstream quality of a reward model: best-of-N sampling chosen by RM A vs by RM B, judged apart.

An RM is used to pick responses, so a fix to it should show in what it picks. For each held-out prompt
the policy samples N responses (temperature 1, seeded: the same N for both RMs); RM A picks its best,
RM B picks its best, and an independent judge RM (trained apart, neither A nor B) scores the two picks:

    outcome = 1 if judge(B's pick) > judge(A's pick), 0.5 if equal (or the same sample), else 0

The win rate of B over A is the mean outcome over prompts, with a percentile bootstrap 95% interval
over prompts (evaluation.bootstrap_mean); 0.5 = no difference the judge can see. The prompts where
both RMs picked the same sample are counted apart: they are ties by construction, and many of them
mean the two RMs rank the policy's samples alike. A prompt where an RM or the judge cannot score
the samples (all empty, or too long for it) is skipped and counted.

Sampling and scoring reuse the Adv-RM rollouts (rollouts.RolloutEngine): the policy's frozen trunk is
run once and every RM that shares it reads its hidden states; the others score the decoded text.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .configs import nested, refuse, required, setting
from .data import DataError, load_preferences, parse_rows, select_rows, write_jsonl
from .evaluation import BOOTSTRAP_RESAMPLES, Interval, bootstrap_mean
from .models import DEFAULT_MODEL
from .rollouts import ResponseConfig
from .runs import RunDir, job
from .runtime import Runtime, seed_everything

PICKS_FILE = "picks.jsonl"       # one line per prompt: both picks, their rewards and the judge's outcome


def _sample_key(config: "BestOfNConfig", engine, batch: Sequence, index: int) -> str:
    """What a batch of samples depends on: the policy, the batch's prompts and place in the run, the
    sampling settings, the seed, the prompt budget and dtype (not the RMs that read them)."""
    import hashlib
    import json

    what = {"policy": config.policy, "prompts": [[p.pair_id, [dict(m) for m in p.prompt]] for p in batch], "index": index,
            "n": config.n, "prompts_per_batch": config.prompts_per_batch, "response": asdict(config.response),
            "seed": config.runtime.seed, "dtype": config.runtime.dtype, "budget": engine.prompt_budget}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


def _cached_samples(path: Path, engine, generator: torch.Generator):
    """The batch's Rollouts kept at ``path`` when it holds the hidden states every RM of ``engine`` reads
    (and the generator then where sampling it left it), else None."""
    from .rollouts import Rollouts
    from .runs import read_torch

    saved, _ = read_torch(path)
    if saved is None or not set(engine.depths) <= set(saved["rollouts"]["states"]):
        return None
    generator.set_state(saved["generator"])
    return Rollouts.from_dict(saved["rollouts"], engine.device)


def _keep_samples(path: Path, roll, generator: torch.Generator) -> None:
    from .runs import atomic_torch_save

    atomic_torch_save(path, {"rollouts": roll.to_dict(), "generator": generator.get_state()})


@dataclass
class BestOfNConfig:
    # the reward models compared, and who judges them
    rm_a: str = required("RM A's checkpoint: the reference (e.g. the base RM)")
    rm_b: str = required("RM B's checkpoint: the one under test (e.g. the REFORM-retrained RM)")
    judge_rm: str = required("the judge RM: trained apart, neither A nor B (its scores decide which pick is better)")
    # the held-out prompts, and the policy that answers them
    data: str = required("preference data whose prompts are held out from A's and B's training")
    policy: str = setting(DEFAULT_MODEL, "the policy that samples the N responses per prompt")
    rows: str = setting("", "held-out rows: 'a:b' or a random fold 'fold=0/5@0' ('' = all)")
    prompts: int = setting(0, "at most this many prompts of those rows, the first ones (0 = all)")
    skip_invalid: bool = setting(True, "invalid rows are skipped, not fatal")
    max_prompt_tokens: int = setting(256, "prompts are cut from the left beyond this (and to fit every RM's max_length)")
    # sampling
    n: int = setting(8, "samples per prompt: the N of best-of-N")
    prompts_per_batch: int = setting(4, "prompts sampled together (N rows each): memory against speed")
    response: ResponseConfig = nested(ResponseConfig, "each sampled response's length and what ends it")
    n_boot: int = setting(BOOTSTRAP_RESAMPLES, "bootstrap resamples of the win rate's interval")
    samples_dir: str = setting("", "keep the sampled responses (with the policy's hidden states the RMs read) here, and "
                                   "reuse them in a later run of the same policy, prompts and sampling: only its RMs "
                                   "run then ('' = sample every time). The pipeline's arms share one")
    runtime: Runtime = nested(Runtime, "device, dtype, threads, seed (of the samples and the bootstrap), remote-code leave")

    def __post_init__(self):
        checks = [
            (all(x.strip() for x in (self.rm_a, self.rm_b, self.judge_rm)),
             "give rm_a, rm_b and judge_rm (checkpoint directories)"),
            (self.judge_rm.strip() not in (self.rm_a.strip(), self.rm_b.strip()),
             "the judge is RM A or RM B: it would judge its own picks; give a judge RM trained apart"),
            (self.n >= 2, f"n={self.n}: best-of-N needs at least 2 samples per prompt (8 is the usual N)"),
            (self.prompts >= 0, f"prompts={self.prompts}: give 0 (all rows) or a positive number"),
            (self.prompts_per_batch >= 1, "prompts_per_batch must be >= 1"),
            (self.max_prompt_tokens >= 4, "max_prompt_tokens must be >= 4"),
            (self.n_boot >= 1, "n_boot must be >= 1"),
        ]
        refuse(self, checks)
        parse_rows(self.rows)


@dataclass
class WinRate:
    """B's picks against A's over prompts: the rate (ties half) with its bootstrap interval, and counts."""

    interval: Interval              # estimate, low, high, n (prompts), level
    wins: int                       # the judge prefers B's pick
    losses: int                     # ... A's pick
    ties: int                       # equal judge scores, the same sample included
    same_pick: int                  # both RMs picked the same sample


def win_rate_interval(outcomes: Sequence[float], same_pick: Sequence[bool] | None = None, *, seed: int = 0,
                      n_boot: int = BOOTSTRAP_RESAMPLES) -> WinRate:
    """``outcomes`` (P,): 1 (B's pick better), 0.5 (tie), 0 (A's) per prompt; ``same_pick`` (P,):
    whether both picked the same sample -> the win rate with its percentile bootstrap 95% interval."""
    values = np.asarray(list(outcomes), dtype=np.float64)
    if not np.isin(values, (0.0, 0.5, 1.0)).all():
        raise ValueError("outcomes must be 1 (B's pick wins), 0.5 (a tie) or 0 (A's pick wins), one per prompt")
    same = [False] * len(values) if same_pick is None else list(same_pick)
    if len(same) != len(values):
        raise ValueError(f"{len(same)} same-pick flags for {len(values)} outcomes; give one per prompt")
    return WinRate(bootstrap_mean(values, n_boot=n_boot, seed=seed), int((values == 1).sum()), int((values == 0).sum()),
                   int((values == 0.5).sum()), int(sum(bool(s) for s in same)))


def pick(rewards: torch.Tensor) -> int | None:
    """(N,) rewards of one prompt's samples -> the index of the best (the first of equals), None when
    no sample could be scored (all NaN)."""
    finite = torch.nan_to_num(rewards.double(), nan=-torch.inf)
    return None if torch.isneginf(finite).all() else int(finite.argmax())


def judge_picks(rewards: torch.Tensor) -> tuple[int | None, int | None, float | None]:
    """(N, 3) rewards of one prompt's samples under (A, B, judge) -> (A's pick, B's pick, B's outcome:
    1, 0.5, 0; None when a pick or the judge's score of one is missing)."""
    a, b = pick(rewards[:, 0]), pick(rewards[:, 1])
    if a is None or b is None:
        return a, b, None
    if a == b:
        return a, b, 0.5
    ja, jb = float(rewards[a, 2]), float(rewards[b, 2])
    if ja != ja or jb != jb:
        return a, b, None
    return a, b, 1.0 if jb > ja else 0.0 if jb < ja else 0.5


@dataclass
class BestOfNResult:
    rm_a: str
    rm_b: str
    judge_rm: str
    n: int                          # samples per prompt
    prompts: int                    # prompts judged (the win rate's n)
    skipped: int                    # prompts left out: an RM or the judge could not score the picks
    win_rate: float                 # B's picks over A's, ties half
    low: float                      # 95% bootstrap interval over prompts
    high: float
    wins: int
    losses: int
    ties: int
    same_pick: int                  # prompts where A and B picked the same sample (ties by construction)
    picks_path: str
    seconds: float = 0.0
    interval: dict = field(default_factory=dict)   # the Interval as a dict (level, n)


@job("loading data and models", done=lambda r: f"B's picks win {r.win_rate:.1%} [{r.low:.1%}, {r.high:.1%}] of {r.prompts} "
                                               f"prompts ({r.same_pick} the same pick)")
def run_best_of_n(config: BestOfNConfig, run: RunDir) -> BestOfNResult:
    """Sample N per prompt, pick by A and by B, judge the picks; writes ``picks.jsonl`` (one line per
    prompt) and the result (metrics.json) in the run directory."""
    from .reward_model import load_reward_model
    from .rollouts import RolloutEngine, build_policy

    start = time.perf_counter()
    seed = config.runtime.seed
    seed_everything(seed)
    pairs = select_rows(load_preferences(config.data, skip_invalid=config.skip_invalid).pairs, config.rows)
    pairs = pairs[: config.prompts] if config.prompts else pairs
    if not pairs:
        raise DataError(f"no pairs in rows {config.rows!r} of {config.data}.", fix="widen or clear the rows.")
    load = config.runtime.load_args()
    rms = [load_reward_model(p, **load) for p in (config.rm_a, config.rm_b, config.judge_rm)]
    # the rollout engine samples from a LoRA-wrapped policy; with the adapter off it is the plain policy
    policy, tokenizer = build_policy(config.policy, lora_layers=1, lora_r=1, lora_alpha=1, seed=seed, **load)
    engine = RolloutEngine.fitting(policy, tokenizer, rms, max_prompt_tokens=config.max_prompt_tokens,
                                    max_new_tokens=config.response.max_new_tokens)
    generator = torch.Generator().manual_seed(seed)
    rows, outcomes, same, reused = [], [], [], 0
    for lo in range(0, len(pairs), config.prompts_per_batch):
        batch = pairs[lo: lo + config.prompts_per_batch]
        kept = Path(config.samples_dir) / f"{_sample_key(config, engine, batch, lo)}.pt" if config.samples_dir else None
        roll = _cached_samples(kept, engine, generator) if kept else None
        if roll is None:
            roll = engine.sample([p.prompt for p in batch], config.n, generator, max_new_tokens=config.response.max_new_tokens,
                                 sentence_window=config.response.sentence_window, adapter=False)
            if kept:
                _keep_samples(kept, roll, generator)
        else:
            reused += 1
        rewards = engine.rm_rewards(roll).view(len(batch), config.n, len(rms))  # (G, N, 3): A, B, judge
        for g, pair in enumerate(batch):
            a, b, outcome = judge_picks(rewards[g])
            texts = roll.texts[g * config.n: (g + 1) * config.n]
            rows.append({"pair_id": pair.pair_id, "prompt": [dict(m) for m in pair.prompt], "pick_a": a, "pick_b": b,
                         "text_a": texts[a] if a is not None else None, "text_b": texts[b] if b is not None else None,
                         "rewards": rewards[g].tolist(), "outcome": outcome})
            if outcome is not None:
                outcomes.append(outcome)
                same.append(a == b)
        run.progress(min(lo + len(batch), len(pairs)), len(pairs), message=f"{min(lo + len(batch), len(pairs))}/{len(pairs)} "
                                                                            "prompts sampled and judged")
    if reused:
        run.log(f"{reused} of {-(-len(pairs) // config.prompts_per_batch)} batches of samples read from {config.samples_dir} "
                "(sampled by an earlier run of the same policy, prompts and sampling)")
    write_jsonl(run.path / PICKS_FILE, rows)
    rate = win_rate_interval(outcomes, same, seed=seed, n_boot=config.n_boot)
    run.log(f"{len(outcomes)} prompts judged, {len(pairs) - len(outcomes)} skipped; B wins {rate.wins}, loses {rate.losses}, "
            f"ties {rate.ties} ({rate.same_pick} the same pick)")
    ci = rate.interval
    return BestOfNResult(config.rm_a, config.rm_b, config.judge_rm, config.n, len(outcomes), len(pairs) - len(outcomes),
                         ci.estimate, ci.low, ci.high, rate.wins, rate.losses, rate.ties, rate.same_pick,
                         str(run.path / PICKS_FILE), time.perf_counter() - start, asdict(ci))
