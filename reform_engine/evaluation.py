"""Pairwise evaluation of a reward model, with the length-only baselines beside it.

Accuracy is the fraction of pairs with r(x, y+) > r(x, y-) (a tie counts one half). The baselines
say how far a rule that never reads the text gets: "longer" always prefers the longer response,
"shorter" the shorter one (lengths in characters; equal lengths count one half). An RM that does
not beat both has learned little beyond length.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .configs import nested, setting
from .data import PreferencePair
from .reward_model import load_reward_model
from .runs import RunDir, job
from .runtime import Runtime
from .scoring import ScoringJob, score_pairs
from .trunk_cache import finish, open_trunk_cache


@dataclass
class PairwiseMetrics:
    n: int
    accuracy: float
    mean_margin: float          # mean of r+ - r-
    longer_baseline: float      # accuracy of "always prefer the longer response"
    shorter_baseline: float     # accuracy of "always prefer the shorter response"


def win_rate(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """(N,), (N,) -> the share of pairs with r_chosen > r_rejected, a tie counting one half."""
    diff = (r_chosen - r_rejected).float()
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def pairwise_metrics(r_chosen: torch.Tensor, r_rejected: torch.Tensor, pairs: Sequence[PreferencePair]) -> PairwiseMetrics:
    """(N,) rewards of chosen and rejected sides of ``pairs`` -> metrics."""
    if len(pairs) == 0:
        raise ValueError("no pairs to evaluate")
    len_chosen = torch.tensor([len(p.chosen) for p in pairs], dtype=torch.float32)
    len_rejected = torch.tensor([len(p.rejected) for p in pairs], dtype=torch.float32)
    return PairwiseMetrics(n=len(pairs), accuracy=win_rate(r_chosen, r_rejected),
                           mean_margin=float((r_chosen - r_rejected).float().mean()),
                           longer_baseline=win_rate(len_chosen, len_rejected), shorter_baseline=win_rate(len_rejected, len_chosen))


@dataclass
class EvaluateRewardConfig(ScoringJob):
    batch_size: int = setting(16, "sequences per forward pass")
    runtime: Runtime = nested(Runtime, "device, dtype, threads, remote-code leave, trunk cache")

    def __post_init__(self):
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")


@dataclass
class EvaluateRewardResult:
    metrics: PairwiseMetrics
    skipped_rows: int                       # invalid rows of the data, left out
    prompts_truncated: int                  # sides whose prompt was cut from the left to fit max_length
    seconds: float                          # loading and scoring
    trunk_cache: dict = field(default_factory=dict)  # hits, misses, entries, bytes (trunk_cache.TrunkCache.summary)


@job("loading", done=lambda r: f"accuracy {r.metrics.accuracy:.3f}")
def evaluate_reward_model(config: EvaluateRewardConfig, run: RunDir) -> EvaluateRewardResult:
    """Pairwise accuracy, mean margin and the length baselines of ``config.reward_model`` on the rows."""
    start = time.perf_counter()
    data, pairs = config.read_pairs()
    rm = load_reward_model(config.reward_model, **config.runtime.load_args(), max_length=config.max_length)
    run.set_status("running", progress=0.1, message=f"scoring {len(pairs)} pairs")
    trunk, note = open_trunk_cache(rm, run_dir=run.path, related=[config.reward_model], **config.runtime.trunk_args())
    run.log(note)
    scores = score_pairs(rm, pairs, batch_size=config.batch_size, max_length=config.max_length, trunk=trunk)
    return EvaluateRewardResult(pairwise_metrics(scores.r_chosen, scores.r_rejected, pairs), len(data.report.skipped),
                                scores.truncated, time.perf_counter() - start, finish(trunk, note, run.log))
