"""Pairwise evaluation of a reward model, with the length-only baselines beside it.

Accuracy is the fraction of pairs with r(x, y+) > r(x, y-) (a tie counts one half). The baselines
say how far a rule that never reads the text gets: "longer" always prefers the longer response,
"shorter" the shorter one (lengths in characters; equal lengths count one half). An RM that does
not beat both has learned little beyond length.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .data import DEMO_PATH, PreferencePair, load_preferences, select_rows
from .runs import job_run
from .runtime import set_cpu_threads
from .trunk_cache import DEFAULT_CAP_GB, check_setting, finish, open_trunk_cache


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
class EvaluateRewardConfig:
    # what
    reward_model: str                       # a checkpoint dir from train-rm, or a seq-cls model id/path
    data: str = str(DEMO_PATH)
    rows: str = ""                          # 'a:b' source rows, '' = all
    skip_invalid: bool = True               # invalid rows are skipped and counted, not fatal
    # how
    max_length: int = 1024                  # generous: evaluation should not skip long pairs
    batch_size: int = 16
    # where
    device: str = "auto"
    dtype: str = "float32"
    threads: int = 0                        # 0 = torch default
    trust_remote_code: bool = False         # let code shipped with the models run (auto_map): only for models you trust
    trunk_cache: str = "auto"               # frozen lower layers' states, computed once (trunk_cache.py): 'auto' =
                                            # run_dir/trunk_cache + the reward model's run's; 'off'; or dirs (first written)
    trunk_cache_gb: float = DEFAULT_CAP_GB  # cap on what this job writes there

    def __post_init__(self):
        check_setting(self.trunk_cache, self.trunk_cache_gb)
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")


@dataclass
class EvaluateRewardResult:
    metrics: PairwiseMetrics
    skipped_rows: int
    prompts_truncated: int
    seconds: float
    trunk_cache: dict = field(default_factory=dict)  # hits, misses, entries, bytes (trunk_cache.TrunkCache.summary)


def evaluate_reward_model(config: EvaluateRewardConfig, run_dir: str | Path) -> EvaluateRewardResult:
    from .reward_model import load_reward_model
    from .scoring import score_pairs

    with job_run(run_dir, config, "loading") as run:
        set_cpu_threads(config.threads)
        start = time.perf_counter()
        data = load_preferences(config.data, skip_invalid=config.skip_invalid)
        pairs = select_rows(data.pairs, config.rows)
        rm = load_reward_model(config.reward_model, device=config.device, dtype=config.dtype, max_length=config.max_length,
                               trust_remote_code=config.trust_remote_code)
        run.set_status("running", progress=0.1, message=f"scoring {len(pairs)} pairs")
        trunk, note = open_trunk_cache(rm, config.trunk_cache, run.path, config.trunk_cache_gb, related=[config.reward_model])
        run.log(note)
        scores = score_pairs(rm, pairs, batch_size=config.batch_size, max_length=config.max_length, trunk=trunk)
        result = EvaluateRewardResult(pairwise_metrics(scores.r_chosen, scores.r_rejected, pairs), len(data.report.skipped),
                                      scores.truncated, time.perf_counter() - start, finish(trunk, note, run.log))
        run.write_metrics(result)
        run.set_status("succeeded", progress=1.0, message=f"accuracy {result.metrics.accuracy:.3f}")
        return result
