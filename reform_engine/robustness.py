"""Robustness of a reward model under perturbations, and the spurious-feature indicators.

Win rate (evaluation.win_rate): the fraction of pairs with r(x, y+) > r(x, y-) (a tie counts one half).
Win-rate drop of a perturbation: win rate on the clean pairs minus win rate on the same pairs with
the perturbation applied to its side (perturbations.py). Positive = the RM lost pairs to a change
that should not matter; 0 = robust; negative = the change helped the RM.

A robustness run also writes every pair's rewards (``scores.jsonl``: clean and per perturbation), so
intervals and paired comparisons of two RMs on the same pairs can be drawn later (:class:`PairScores`).
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .configs import nested, setting
from .data import PreferencePair, replace
from .evaluation import pair_wins, win_rate
from .perturbations import PERTURBATIONS, perturb
from .runs import RunDir, atomic_write_text, job
from .runtime import Runtime
from .scoring import ScoringJob
from .trunk_cache import finish, open_trunk_cache

SCORES_FILE = "scores.jsonl"


def perturb_pairs(pairs: Sequence[PreferencePair], name: str, seed: int = 0) -> list[PreferencePair]:
    """The pairs with perturbation ``name`` applied to its side; pair i uses seed ``seed + i``."""
    side = PERTURBATIONS[name].side if name in PERTURBATIONS else None
    if side is None:
        raise ValueError(f"unknown perturbation {name!r}; choose from {sorted(PERTURBATIONS)}")
    return [replace(p, **{side: perturb(name, getattr(p, side), p.prompt_text, seed + i)}) for i, p in enumerate(pairs)]


@dataclass
class PerturbationResult:
    name: str
    side: str
    clean_win_rate: float
    perturbed_win_rate: float
    drop: float                     # clean - perturbed


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    if len(x) < 3:
        return float("nan")
    t = torch.tensor([list(x), list(y)], dtype=torch.float64)
    if (t.std(dim=1) == 0).any():
        return float("nan")
    return float(torch.corrcoef(t)[0, 1])


def repetition_score(text: str) -> float:
    """Share of word trigrams that occur more than once (0 = no repetition)."""
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if not grams:
        return 0.0
    counts: dict = {}
    for g in grams:
        counts[g] = counts.get(g, 0) + 1
    return sum(c for c in counts.values() if c > 1) / len(grams)


def capital_ratio(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(c.isupper() for c in letters) / len(letters) if letters else 0.0


@dataclass
class SpuriousIndicators:
    """Correlations of reward with surface features over all scored responses (both sides)."""

    length_corr: float              # Pearson r of reward vs response length in characters
    capital_corr: float             # ... vs share of upper-case letters
    repetition_corr: float          # ... vs repeated-trigram share
    extreme_negative_share: float   # share of rewards below mean - 2 std


def spurious_indicators(texts: Sequence[str], rewards: Sequence[float]) -> SpuriousIndicators:
    r = torch.tensor(list(rewards), dtype=torch.float64)
    threshold = r.mean() - 2 * r.std() if len(r) > 1 else torch.tensor(-math.inf)
    return SpuriousIndicators(_pearson([len(t) for t in texts], rewards), _pearson([capital_ratio(t) for t in texts], rewards),
                              _pearson([repetition_score(t) for t in texts], rewards), float((r < threshold).double().mean()))


@dataclass
class RobustnessConfig(ScoringJob):
    perturbations: str = setting(",".join(PERTURBATIONS), "comma-separated perturbation names (perturbations.py)")
    batch_size: int = setting(16, "sequences per forward pass")
    runtime: Runtime = nested(Runtime, "device, dtype, threads, seed (of the perturbations), remote-code leave, trunk cache")

    def names(self) -> list[str]:
        return [n.strip() for n in self.perturbations.split(",") if n.strip()]

    def __post_init__(self):
        super().__post_init__()
        unknown = [n for n in self.names() if n not in PERTURBATIONS]
        if unknown or not self.names():
            raise ValueError(f"perturbations={self.perturbations!r}: unknown {unknown}; choose from {sorted(PERTURBATIONS)}")


def robustness_stage(help: str):
    """A job's robustness stage as a nested config field: the job fills in which RM, which pairs and
    rows, and its own runtime (they are no flags of the job)."""
    return nested(lambda: RobustnessConfig(reward_model=""), help, set_by_job=("reward_model", "data", "rows", "runtime"))


@dataclass
class RobustnessResult:
    n_pairs: int
    clean_win_rate: float
    mean_drop: float
    per_perturbation: list[PerturbationResult] = field(default_factory=list)
    indicators: SpuriousIndicators | None = None
    seconds: float = 0.0
    trunk_cache: dict = field(default_factory=dict)  # hits, misses, entries, bytes (trunk_cache.TrunkCache.summary)


@dataclass
class PairScores:
    """Every pair's rewards: clean, and of the perturbed side under each perturbation."""

    pair_ids: list[str]
    chosen: list[float]                     # (N,) r(x, y+)
    rejected: list[float]                   # (N,) r(x, y-)
    perturbed: dict[str, list[float]]       # name -> (N,) r of its side perturbed, the other side clean

    def wins(self, name: str | None = None) -> np.ndarray:
        """(N,) per-pair wins (1, a tie 0.5, 0): clean, or under perturbation ``name``."""
        if name is None:
            return pair_wins(self.chosen, self.rejected)
        new = self.perturbed[name]
        return pair_wins(new, self.rejected) if PERTURBATIONS[name].side == "chosen" else pair_wins(self.chosen, new)

    def drops(self, name: str | None = None) -> np.ndarray:
        """(N,) per-pair win drop under ``name`` (None: the mean over the perturbations): its mean is the drop."""
        if name is None:
            return np.mean([self.drops(n) for n in self.perturbed], axis=0)
        return self.wins() - self.wins(name)

    def to_rows(self) -> list[dict]:
        return [{"pair_id": p, "chosen": c, "rejected": r, "perturbed": {n: v[i] for n, v in self.perturbed.items()}}
                for i, (p, c, r) in enumerate(zip(self.pair_ids, self.chosen, self.rejected))]

    @classmethod
    def from_rows(cls, rows: Sequence[dict]) -> PairScores:
        names = list(rows[0]["perturbed"]) if rows else []
        return cls([r["pair_id"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows],
                   {n: [r["perturbed"][n] for r in rows] for n in names})


def robustness_intervals(scores: PairScores, base: PairScores | None = None, *, seed: int = 0) -> dict:
    """Bootstrap 95% intervals of one model's robustness, from its per-pair rewards: clean accuracy,
    mean drop and each perturbation's drop; with ``base`` (the base RM on the same pairs) the paired
    intervals of the differences (model minus base: clean accuracy, mean drop, each perturbation's drop)
    and of the ratio of mean drops. Intervals as dicts {estimate, low, high, n, level}; ``vs_base`` is left out when the two
    were not scored on the same pairs."""
    from dataclasses import asdict

    from .evaluation import bootstrap_mean, paired_bootstrap_diff, paired_bootstrap_ratio

    out = {"clean_accuracy": asdict(bootstrap_mean(scores.wins(), seed=seed)),
           "mean_drop": asdict(bootstrap_mean(scores.drops(), seed=seed)),
           "drops": {name: asdict(bootstrap_mean(scores.drops(name), seed=seed)) for name in scores.perturbed}}
    if base is not None and base.pair_ids == scores.pair_ids and set(base.perturbed) == set(scores.perturbed):
        out["vs_base"] = {
            "clean_accuracy": asdict(paired_bootstrap_diff(scores.wins(), base.wins(), seed=seed)),
            "mean_drop": asdict(paired_bootstrap_diff(scores.drops(), base.drops(), seed=seed)),
            "drop_ratio": asdict(paired_bootstrap_ratio(scores.drops(), base.drops(), seed=seed)),
            "drops": {name: asdict(paired_bootstrap_diff(scores.drops(name), base.drops(name), seed=seed))
                      for name in scores.perturbed}}
    return out


def read_pair_scores(run_dir: str | Path) -> PairScores | None:
    """The per-pair rewards of a finished robustness run, None when it wrote none (an older run)."""
    path = Path(run_dir) / SCORES_FILE
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as fh:
        return PairScores.from_rows([json.loads(line) for line in fh if line.strip()])


def score_robustness(rm, pairs: Sequence[PreferencePair], names: Sequence[str], *, seed: int = 0, batch_size: int = 16,
                     max_length: int | None = None, on_progress=None, trunk=None) -> PairScores:
    """Every pair's clean and perturbed rewards under ``rm``. A perturbation changes one side, so the
    other side keeps its clean score; each pair's prompt is run once for its clean sides and all its
    perturbed sides together (scoring.score_encoded_groups; ``trunk``: a trunk_cache.TrunkCache).
    ``on_progress(done, total)`` counts pairs."""
    from .data import DataError
    from .scoring import encode, score_encoded_groups

    max_length = max_length or rm.spec.max_length
    perturbed = {name: perturb_pairs(pairs, name, seed) for name in names}
    sides = [PERTURBATIONS[name].side for name in names]
    r_c, r_r, r_p = [], [], {name: [] for name in names}
    chunk = max(1, batch_size)  # pairs per scoring call, so progress moves
    for lo in range(0, len(pairs), chunk):
        groups = []
        for i in range(lo, min(lo + chunk, len(pairs))):
            p = pairs[i]
            texts = [p.chosen, p.rejected] + [getattr(perturbed[n][i], side) for n, side in zip(names, sides)]
            try:
                groups.append([encode(rm.tokenizer, p.prompt, t, max_length=max_length,
                                      use_chat_template=rm.spec.use_chat_template) for t in texts])
            except DataError as exc:
                raise DataError(exc.message, source=f"pair {p.pair_id}", fix=exc.fix) from exc
        for g in score_encoded_groups(rm, groups, batch_size=batch_size, trunk=trunk):
            r_c.append(g[0])
            r_r.append(g[1])
            for name, value in zip(names, g[2:]):
                r_p[name].append(value)
        if on_progress:
            on_progress(len(r_c), len(pairs))
    return PairScores([p.pair_id for p in pairs], [float(x) for x in r_c], [float(x) for x in r_r],
                      {n: [float(x) for x in v] for n, v in r_p.items()})


def summarize_robustness(scores: PairScores, pairs: Sequence[PreferencePair], seconds: float = 0.0) -> RobustnessResult:
    """Win rates, drops and indicators from the per-pair rewards of ``pairs``."""
    clean_c, clean_r = torch.tensor(scores.chosen), torch.tensor(scores.rejected)
    base = win_rate(clean_c, clean_r)
    results = []
    for name, values in scores.perturbed.items():
        side = PERTURBATIONS[name].side
        new = torch.tensor(values)
        wr = win_rate(new, clean_r) if side == "chosen" else win_rate(clean_c, new)
        results.append(PerturbationResult(name, side, base, wr, base - wr))
    texts = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    indicators = spurious_indicators(texts, scores.chosen + scores.rejected)
    return RobustnessResult(len(pairs), base, sum(r.drop for r in results) / len(results), results, indicators, seconds)


def robustness_report(rm, pairs: Sequence[PreferencePair], names: Sequence[str], *, seed: int = 0, batch_size: int = 16,
                      max_length: int | None = None, on_progress=None, trunk=None) -> RobustnessResult:
    """Clean and perturbed win rates of ``rm`` on ``pairs`` (:func:`score_robustness`, summarized)."""
    start = time.perf_counter()
    scores = score_robustness(rm, pairs, names, seed=seed, batch_size=batch_size, max_length=max_length, on_progress=on_progress,
                              trunk=trunk)
    return summarize_robustness(scores, pairs, time.perf_counter() - start)


@job("scoring clean pairs", done=lambda r: f"mean win-rate drop {r.mean_drop:+.3f}")
def evaluate_robustness(config: RobustnessConfig, run: RunDir) -> RobustnessResult:
    """Clean and perturbed win rates of ``config.reward_model`` on the rows, with the indicators."""
    from .reward_model import load_reward_model

    pairs = config.read_pairs()[1]
    rm = load_reward_model(config.reward_model, **config.runtime.load_args(), max_length=config.max_length)
    trunk, note = open_trunk_cache(rm, run_dir=run.path, related=[config.reward_model], **config.runtime.trunk_args())
    run.log(note)
    start = time.perf_counter()
    scores = score_robustness(rm, pairs, config.names(), seed=config.runtime.seed, batch_size=config.batch_size,
                              max_length=config.max_length, trunk=trunk,
                              on_progress=lambda i, n: run.progress(i, n, message=f"{i}/{n} pairs scored"))
    result = summarize_robustness(scores, pairs, time.perf_counter() - start)
    result.trunk_cache = finish(trunk, note, run.log)
    atomic_write_text(run.path / SCORES_FILE, "".join(json.dumps(r) + "\n" for r in scores.to_rows()))
    return result
