"""Influential training pairs: REFORM attacks the pairs the RM finds easiest.

Every training pair is scored and its Bradley-Terry loss -log sigmoid(r+ - r-) computed; the
lowest-loss p% (default 5%) are "influential". Random-p% and highest-loss-p% selections are offered
beside it, since which pairs to attack is an open question the method's authors name.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .configs import nested, setting
from .data import DataError, PreferencePair, write_jsonl
from .runs import RunDir, job
from .runtime import Runtime
from .scoring import PairScores, ScoringJob
from .trunk_cache import finish, open_trunk_cache

STRATEGIES = ("lowest_loss", "random", "highest_loss")
SKIPPED_FILE = "skipped.jsonl"  # beside scored.jsonl: the pairs an influential run could not score (too long)


@dataclass
class ScoredPair:
    pair: PreferencePair
    r_chosen: float
    r_rejected: float
    loss: float
    rank: int          # 1 = lowest loss in the whole scored set

    def row(self) -> dict:
        """Flat record for tables and files."""
        return {"pair_id": self.pair.pair_id, "prompt": self.pair.prompt_text.strip(), "chosen": self.pair.chosen,
                "rejected": self.pair.rejected, "r_chosen": self.r_chosen, "r_rejected": self.r_rejected,
                "margin": self.r_chosen - self.r_rejected, "loss": self.loss, "rank": self.rank}


def rank_pairs(pairs: Sequence[PreferencePair], scores: PairScores) -> list[ScoredPair]:
    """All scored pairs with their rewards and loss, in input order, ranked by loss (ties by input
    order); pairs the scoring skipped (``scores.skipped``) are left out."""
    pairs = scores.scored(pairs)
    losses = scores.losses.tolist()
    order = sorted(range(len(pairs)), key=lambda i: (losses[i], i))
    rank = {i: r + 1 for r, i in enumerate(order)}
    return [ScoredPair(p, float(scores.r_chosen[i]), float(scores.r_rejected[i]), losses[i], rank[i]) for i, p in enumerate(pairs)]


def check_selection(fraction: float, strategy: str) -> None:
    """Refuse a share outside (0, 1] or an unknown strategy."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction}: give the share of pairs to select, in (0, 1] (0.05 = 5%)")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}; use one of {STRATEGIES}")


def select_influential(scored: Sequence[ScoredPair], fraction: float = 0.05, strategy: str = "lowest_loss",
                       seed: int = 0) -> list[ScoredPair]:
    """The ceil(fraction * N) pairs picked by ``strategy``, lowest rank first (random: in drawn order)."""
    check_selection(fraction, strategy)
    if not scored:
        raise ValueError("no scored pairs to select from")
    n = max(1, math.ceil(fraction * len(scored)))
    by_rank = sorted(scored, key=lambda s: s.rank)
    if strategy == "lowest_loss":
        return by_rank[:n]
    if strategy == "highest_loss":
        return by_rank[::-1][:n]
    pick = torch.randperm(len(scored), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return [scored[i] for i in pick]


def load_scored(pairs: Sequence[PreferencePair], path: str | Path) -> list[ScoredPair]:
    """The ranking an ``influential`` run wrote (scored.jsonl), attached to ``pairs`` by pair id, so a
    later job does not score the whole training set again. Pairs that run skipped as too long
    (skipped.jsonl beside it) are left out here too."""
    import json

    def read(file: Path) -> dict[str, dict]:
        rows = {}
        with open(file, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    rows[row["pair_id"]] = row
        return rows
    rows = read(Path(path))
    skipped_file = Path(path).with_name(SKIPPED_FILE)
    skipped = read(skipped_file) if skipped_file.is_file() else {}
    pairs = [p for p in pairs if p.pair_id not in skipped]
    missing = [p.pair_id for p in pairs if p.pair_id not in rows]
    if missing:
        raise DataError(f"{len(missing)} pairs (first: {missing[0]}) are not in the scored file.", source=str(path),
                        fix="run 'influential' on the same data and rows, or leave 'scored' empty to score here.")
    return [ScoredPair(p, rows[p.pair_id]["r_chosen"], rows[p.pair_id]["r_rejected"], rows[p.pair_id]["loss"],
                       rows[p.pair_id]["rank"]) for p in pairs]


def write_scored(directory: str | Path, scored: Sequence[ScoredPair], skipped_ids: Sequence[str], key=None) -> Path:
    """Write a ranking for a later job to reuse -> the scored.jsonl: every scored pair (scored.jsonl),
    the pairs left out as too long (skipped.jsonl) and, when known, the ``score_cache.ScoreKey`` the
    scores were made under (score_key.json), which the later job checks against its own."""
    from .score_cache import write_key

    directory = Path(directory)
    write_jsonl(directory / SKIPPED_FILE, [{"pair_id": i, "reason": "longer than max_length"} for i in skipped_ids])
    write_jsonl(directory / "scored.jsonl", [s.row() for s in scored])
    if key is not None:
        write_key(directory, key)
    return directory / "scored.jsonl"


@dataclass
class InfluenceConfig(ScoringJob):
    fraction: float = setting(0.05, "share of the pairs to select, in (0, 1]; REFORM's default: the lowest-loss 5%")
    strategy: str = setting("lowest_loss", "which pairs: lowest_loss (REFORM), random or highest_loss (for comparison)",
                            choices=STRATEGIES)
    skip_too_long: bool = setting(True, "a pair whose response does not fit max_length is left out and counted, not fatal")
    batch_size: int = setting(16, "sequences per forward pass")
    runtime: Runtime = nested(Runtime, "device, dtype, threads, seed (of strategy random), remote-code leave, trunk cache")

    def __post_init__(self):
        super().__post_init__()
        check_selection(self.fraction, self.strategy)


@dataclass
class InfluenceResult:
    n_scored: int
    n_skipped: int                          # pairs left out: a response longer than max_length
    n_selected: int
    strategy: str
    mean_loss_all: float
    mean_loss_selected: float
    scored_path: str                        # every pair with rewards, loss, rank (JSONL)
    selected_path: str                      # the selection (JSONL)
    seconds: float
    trunk_cache: dict = field(default_factory=dict)  # hits, misses, entries, bytes (trunk_cache.TrunkCache.summary)
    cpu_seconds: float = 0.0                # CPU time of the job's process, all its threads


@job("scoring training pairs", done=lambda r: f"selected {r.n_selected} of {r.n_scored} pairs"
     + (f"; {r.n_skipped} too long to score, skipped" if r.n_skipped else ""))
def find_influential(config: InfluenceConfig, run: RunDir) -> InfluenceResult:
    """Score every pair, rank by loss, write scored.jsonl, selected.jsonl and skipped.jsonl."""
    from .reward_model import load_reward_model
    from .score_cache import score_key
    from .scoring import score_pairs

    start, cpu_start = time.perf_counter(), time.process_time()
    pairs = config.read_pairs()[1]
    rm = load_reward_model(config.reward_model, **config.runtime.load_args(), max_length=config.max_length)
    trunk, note = open_trunk_cache(rm, run_dir=run.path, related=[config.reward_model], **config.runtime.trunk_args())
    run.log(f"scoring {len(pairs)} pairs; {note}")
    scores = score_pairs(rm, pairs, batch_size=config.batch_size, max_length=config.max_length, trunk=trunk,
                         skip_too_long=config.skip_too_long,
                         on_progress=lambda done, total: run.progress(done, total, message=f"{done}/{total} responses scored"))
    if scores.skipped:
        run.log(f"{len(scores.skipped)} pairs skipped: a response longer than max_length={config.max_length} tokens "
                f"(first: {pairs[scores.skipped[0]].pair_id})")
    scored = rank_pairs(pairs, scores)
    if not scored:
        raise DataError(f"none of the {len(pairs)} pairs fits max_length={config.max_length}.", source=config.data,
                        fix="raise max_length.")
    selected = select_influential(scored, config.fraction, config.strategy, config.runtime.seed)
    write_scored(run.path, scored, [pairs[i].pair_id for i in scores.skipped],
                 score_key(config.reward_model, config.data, config.rows, config.skip_invalid, config.max_length))
    write_jsonl(run.path / "selected.jsonl", [s.row() for s in selected])
    return InfluenceResult(len(scored), len(scores.skipped), len(selected), config.strategy,
                           sum(s.loss for s in scored) / len(scored), sum(s.loss for s in selected) / len(selected),
                           str(run.path / "scored.jsonl"), str(run.path / "selected.jsonl"), time.perf_counter() - start,
                           finish(trunk, note, run.log), time.process_time() - cpu_start)
