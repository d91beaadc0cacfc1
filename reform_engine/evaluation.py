"""Pairwise evaluation of a reward model, with the length-only baselines beside it, and bootstrap
intervals for any rate measured over pairs (or samples, or prompts).

Accuracy is the fraction of pairs with r(x, y+) > r(x, y-) (a tie counts one half). The baselines
say how far a rule that never reads the text gets: "longer" always prefers the longer response,
"shorter" the shorter one (lengths in characters; equal lengths count one half). An RM that does
not beat both has learned little beyond length.

Intervals are percentile bootstraps over the items (seeded, so a report is repeatable): the mean of
per-item values (a 0/1 win or success, a tie 0.5) resampled with replacement. Two models on the same
pairs are compared by the paired bootstrap, resampling pairs once for both, so the interval of the
difference is narrower than the two separate intervals suggest; two methods measured on different
items by the unpaired one, resampling each side on its own.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
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


# --------------------------------------------------------------------------- bootstrap intervals

BOOTSTRAP_RESAMPLES = 2000      # percentile ends within ~0.5 point of their limit for rates over >= 100 items


@dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap interval; NaN throughout when there were no items."""

    estimate: float
    low: float
    high: float
    n: int                          # items (pairs, samples, prompts) it was measured on
    level: float = 0.95

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _values(values: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    a = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64).reshape(-1)
    if not np.isfinite(a).all():
        raise ValueError("bootstrap values must be finite: drop the NaN items (unscored pairs) first")
    return a


def _check(n_boot: int, level: float) -> None:
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"n_boot={n_boot}, level={level}: use at least 1 resample and a level in (0, 1), e.g. 0.95")


def _percentiles(stats: np.ndarray, estimate: float, n: int, level: float) -> Interval:
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return Interval(estimate, float(low), float(high), n, level)


def _nan(n: int, level: float) -> Interval:
    return Interval(float("nan"), float("nan"), float("nan"), n, level)


def bootstrap_mean(values, *, n_boot: int = BOOTSTRAP_RESAMPLES, level: float = 0.95, seed: int = 0) -> Interval:
    """(N,) per-item values -> their mean with its percentile-bootstrap interval (items resampled
    with replacement ``n_boot`` times, from a generator seeded with ``seed``)."""
    _check(n_boot, level)
    a = _values(values)
    if a.size == 0:
        return _nan(0, level)
    idx = np.random.default_rng(seed).integers(0, a.size, size=(n_boot, a.size))  # (B, N)
    return _percentiles(a[idx].mean(axis=1), float(a.mean()), a.size, level)


def paired_bootstrap_diff(a, b, *, n_boot: int = BOOTSTRAP_RESAMPLES, level: float = 0.95, seed: int = 0) -> Interval:
    """(N,), (N,) values of two models on the same N items -> mean(a) - mean(b) with the interval of
    the paired bootstrap (one resample of the items serves both)."""
    x, y = _values(a), _values(b)
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same items: {x.size} vs {y.size}; use bootstrap_diff for different items")
    return bootstrap_mean(x - y, n_boot=n_boot, level=level, seed=seed)


def paired_bootstrap_ratio(a, b, *, n_boot: int = BOOTSTRAP_RESAMPLES, level: float = 0.95, seed: int = 0) -> Interval:
    """(N,), (N,) values of two models on the same N items -> mean(a) / mean(b) with the interval of
    the paired bootstrap (e.g. a retrained RM's mean win-rate drop over the base's). A resample whose
    mean(b) is 0 has no ratio and is left out; NaN throughout when mean(b) itself is 0."""
    _check(n_boot, level)
    x, y = _values(a), _values(b)
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same items: {x.size} vs {y.size}")
    if x.size == 0 or y.mean() == 0:
        return _nan(x.size, level)
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    mx, my = x[idx].mean(axis=1), y[idx].mean(axis=1)
    keep = my != 0
    return _percentiles(mx[keep] / my[keep], float(x.mean() / y.mean()), x.size, level)


def bootstrap_diff(a, b, *, n_boot: int = BOOTSTRAP_RESAMPLES, level: float = 0.95, seed: int = 0) -> Interval:
    """(N,), (M,) values measured on different items -> mean(a) - mean(b), each side resampled on its own."""
    _check(n_boot, level)
    x, y = _values(a), _values(b)
    if x.size == 0 or y.size == 0:
        return _nan(min(x.size, y.size), level)
    rng = np.random.default_rng(seed)
    mx = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    my = y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(axis=1)
    return _percentiles(mx - my, float(x.mean() - y.mean()), min(x.size, y.size), level)


def pair_wins(r_chosen, r_rejected) -> np.ndarray:
    """(N,), (N,) -> (N,) per pair 1 when r_chosen > r_rejected, 0.5 for a tie, else 0: the items whose
    mean is :func:`win_rate`."""
    diff = _values(r_chosen) - _values(r_rejected)
    return (diff > 0) + 0.5 * (diff == 0)


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
