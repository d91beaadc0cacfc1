"""The stages of a job that trains and compares reward models (``pipeline``, ``retrain``).

A stage is an ordinary job run in its own sub-directory of the parent job's run directory. A stage
whose directory already holds a succeeded run of the same config (runtime placement aside) is reused,
not re-run, so a killed parent resumes where it stopped; a stage that reads what an upstream stage
wrote re-runs whenever that upstream stage ran afresh.

Each compared model gets a :class:`ModelReport` from its robustness stage, and the parent writes
``report.json`` through :meth:`Stages.write_report`, one schema for every such job::

    models    [{name, checkpoint, augment_pairs, clean_accuracy, mean_drop, drops, indicators, n_pairs,
               intervals: 95% bootstrap of accuracy and drops, paired vs the base (robustness_intervals)}]
    stages    [{name, seconds, reused}]
    variants  {strategy: variant stats}          (empty when the job decodes none)
    rounds    [{round, target, pass_rate, ...}]   (adv-rounds: one row per attack; empty for the others)
    seconds, report_path
    summary   ComparisonResult.summary_rows()
    drops     ComparisonResult.drop_rows()
    complete  whether every planned stage has run (a running job rewrites it after each model)
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_keys import same_job
from .configs import setting
from .runs import RunDir, atomic_write_json, read_json, to_jsonable
from .training import TrainRewardConfig

RETRAIN_MODES = ("scratch", "finetune")


# --------------------------------------------------------------------------- the retraining recipe

def check_retrain(mode_field: str, mode: str, finetune_epochs: int, finetune_lr: float, replay: int) -> None:
    """Refuse bad retraining knobs of a config whose mode field is called ``mode_field``."""
    if mode not in RETRAIN_MODES:
        raise ValueError(f"{mode_field}={mode!r}; use one of {RETRAIN_MODES}")
    if finetune_epochs < 1 or finetune_lr < 0 or replay < 0:
        raise ValueError("finetune_epochs must be >= 1, finetune_lr >= 0 (0 = the base's lr) and replay >= 0 "
                         "(0 = all original pairs)")


@dataclass
class RetrainRecipe:
    """How a base RM is retrained on its pairs plus new ones (``--retrain.mode finetune`` ...)."""

    mode: str = setting("scratch", "scratch: the base's own recipe and seed from a fresh model (the method's choice); "
                                   "finetune: continue the base checkpoint", choices=RETRAIN_MODES)
    finetune_epochs: int = setting(1, "finetune: epochs over original + new pairs")
    finetune_lr: float = setting(0.0, "finetune: learning rate (0 = the base's)")
    replay: int = setting(0, "finetune: a seeded sample of this many original pairs (0 = all of them)")

    def __post_init__(self):
        check_retrain("retrain.mode", self.mode, self.finetune_epochs, self.finetune_lr, self.replay)

    def training_config(self, base: TrainRewardConfig, base_rm: str, augment_data: str, **fields: Any) -> TrainRewardConfig:
        """The config that retrains ``base`` (its checkpoint ``base_rm``) with this recipe (retrain_config)."""
        return retrain_config(base, self.mode, base_rm, augment_data, finetune_epochs=self.finetune_epochs,
                              finetune_lr=self.finetune_lr, replay=self.replay, **fields)


def retrain_config(base: TrainRewardConfig, mode: str, base_rm: str, augment_data: str, *, finetune_epochs: int = 1,
                   finetune_lr: float = 0.0, replay: int = 0, **fields: Any) -> TrainRewardConfig:
    """The config that retrains a base RM on its pairs plus ``augment_data``.

    ``base`` is the recipe that trained the base (backbone, hyperparameters, seed, data). scratch:
    that recipe again, from a fresh model; finetune: continue checkpoint ``base_rm`` for
    ``finetune_epochs`` at ``finetune_lr`` (0 = the base's lr), replaying a seeded sample of
    ``replay`` original pairs (0 = all). Neither evaluates at the end nor saves midway (the compared
    models are evaluated by their own stages). ``fields`` override anything else (data, runtime)."""
    fields = {"augment_data": augment_data, "eval_data": "", "eval_rows": "", "save_every": 0, **fields}
    if mode == "scratch":
        return dataclasses.replace(base, init_from="", **fields)
    if mode == "finetune":
        return dataclasses.replace(base, init_from=str(base_rm), epochs=finetune_epochs, max_steps=0,
                                   lr=finetune_lr or base.lr, train_sample=replay, **fields)
    raise ValueError(f"retrain mode {mode!r}; use one of {RETRAIN_MODES}")


# --------------------------------------------------------------------------- what a job reports

@dataclass
class StageTiming:
    name: str
    seconds: float                          # wall time of the stage when it ran
    reused: bool                            # found finished in the run directory, not run again


@dataclass
class ModelReport:
    name: str                               # base | reform | random | no_aug | retrained
    checkpoint: str
    augment_pairs: int
    clean_accuracy: float                   # win rate on the clean held-out pairs (ties count half)
    mean_drop: float                        # mean win-rate drop over the perturbations
    drops: dict[str, float] = field(default_factory=dict)
    indicators: dict[str, float] = field(default_factory=dict)
    intervals: dict = field(default_factory=dict)   # robustness.robustness_intervals: 95% bootstrap, paired vs base
    n_pairs: int = 0                                 # held-out pairs it was evaluated on

    @classmethod
    def from_robustness(cls, name: str, checkpoint: str, augment_pairs: int, metrics: dict,
                        stage_dir: str | Path | None = None, base_dir: str | Path | None = None, seed: int = 0) -> ModelReport:
        """From the metrics of a robustness stage (RobustnessResult as a dict); with its ``stage_dir``,
        the intervals from the per-pair rewards it wrote, paired against the base's (``base_dir``)."""
        from .robustness import read_pair_scores, robustness_intervals

        scores = read_pair_scores(stage_dir) if stage_dir is not None else None
        base = read_pair_scores(base_dir) if base_dir is not None and Path(base_dir) != Path(stage_dir or "") else None
        intervals = robustness_intervals(scores, base, seed=seed) if scores is not None and scores.pair_ids else {}
        return cls(name, checkpoint, augment_pairs, metrics["clean_win_rate"], metrics["mean_drop"],
                   {p["name"]: p["drop"] for p in metrics["per_perturbation"]}, metrics["indicators"] or {},
                   intervals, int(metrics.get("n_pairs", 0)))


@dataclass
class ComparisonResult:
    models: list[ModelReport]
    stages: list[StageTiming]
    variants: dict[str, dict]               # strategy -> variant stats (inversions, success rate, ...)
    seconds: float
    report_path: str
    rounds: list[dict] = field(default_factory=list)  # adv-rounds: one row per attack (rounds.RoundReport)

    def summary_rows(self) -> list[dict]:
        """One row per model: Plotly/pandas-ready; ``*_low``/``*_high``: the 95% interval ends (None
        without per-pair rewards), paired against the base for the changes and the ratio."""
        base = next((m for m in self.models if m.name == "base"), None)

        def ends(m: ModelReport, *path: str) -> tuple[float | None, float | None]:
            node = m.intervals
            for key in path:
                node = node.get(key, {}) if isinstance(node, dict) else {}
            low, high = node.get("low"), node.get("high")   # NaN (no interval: e.g. a ratio over a zero drop) -> None
            return tuple(None if v is None or v != v else v for v in (low, high))

        rows = []
        for m in self.models:
            row = {"model": m.name, "n_pairs": m.n_pairs, "augment_pairs": m.augment_pairs, "clean_accuracy": m.clean_accuracy,
                   "mean_drop": m.mean_drop, "drop_vs_base": (m.mean_drop / base.mean_drop) if base and base.mean_drop else None,
                   "accuracy_change": m.clean_accuracy - base.clean_accuracy if base else None}
            for column, path in (("clean_accuracy", ("clean_accuracy",)), ("mean_drop", ("mean_drop",)),
                                 ("drop_vs_base", ("vs_base", "drop_ratio")), ("accuracy_change", ("vs_base", "clean_accuracy"))):
                row[f"{column}_low"], row[f"{column}_high"] = ends(m, *path)
            rows.append(row)
        return rows

    def drop_rows(self) -> list[dict]:
        """Long format (model, perturbation, drop, low, high): one bar per cell in a grouped bar chart,
        its 95% interval the error bar (None without per-pair rewards)."""
        return [{"model": m.name, "perturbation": p, "drop": d,
                 "low": m.intervals.get("drops", {}).get(p, {}).get("low"), "high": m.intervals.get("drops", {}).get(p, {}).get("high")}
                for m in self.models for p, d in m.drops.items()]


# --------------------------------------------------------------------------- running stages

def finished(stage_dir: str | Path, config: Any) -> dict | None:
    """The metrics of a succeeded run of ``config`` in ``stage_dir`` (the same job: config_keys), else None."""
    stage_dir = Path(stage_dir)
    status, previous = read_json(stage_dir / "status.json", {}) or {}, read_json(stage_dir / "config.json")
    metrics = read_json(stage_dir / "metrics.json")
    if status.get("state") == "succeeded" and isinstance(previous, dict) and metrics is not None and \
            same_job(previous, config):
        return metrics
    return None


def run_stage(run_dir: Path, name: str, fn: Callable, config: Any, timings: list[StageTiming], *, reuse: bool = True) -> dict:
    """Run ``fn(config, run_dir/name)`` unless ``reuse`` and that directory holds a succeeded run of
    the same config (runtime placement aside); appends the stage's timing -> its metrics as a dict."""
    stage_dir = run_dir / name
    metrics = finished(stage_dir, config) if reuse else None
    if metrics is not None:
        wall = read_json(stage_dir / "stage.json", {}) or {}
        timings.append(StageTiming(name, float(wall.get("seconds", metrics.get("seconds", 0.0))), True))
        return metrics
    earlier, segments = _interrupted_seconds(stage_dir)
    start = time.perf_counter()
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stage_dir / "stage.json", {"started_at": time.time(), "earlier_seconds": earlier, "segments": segments + 1})
    result = to_jsonable(fn(config, stage_dir))
    seconds = earlier + time.perf_counter() - start
    atomic_write_json(stage_dir / "stage.json", {"seconds": seconds, "segments": segments + 1})
    timings.append(StageTiming(name, seconds, False))
    return result


def _interrupted_seconds(stage_dir: Path) -> tuple[float, int]:
    """The wall seconds and number of the earlier runs of a stage that were stopped before it finished (the job
    resumes from its checkpoint): from each run's start to its status's last update, so a little under."""
    mark = read_json(stage_dir / "stage.json", {}) or {}
    if "started_at" not in mark:
        return 0.0, 0
    updated = float((read_json(stage_dir / "status.json", {}) or {}).get("updated_at") or mark["started_at"])
    return float(mark.get("earlier_seconds", 0.0)) + max(0.0, updated - float(mark["started_at"])), int(mark.get("segments", 1))


class Stages:
    """The stages of one job: ``stages(name, fn, config, after)`` runs (or reuses) one, with progress
    ``stage i/total`` in the job's status and a line in its log; :meth:`write_report` writes its
    ``report.json``."""

    def __init__(self, run: RunDir, total: int):
        self.run, self.total = run, total
        self.done = 0                       # stages run, reused or skipped so far
        self.timings: list[StageTiming] = []
        self.fresh: set[str] = set()        # stages that ran (not reused) in this call
        self.start = time.perf_counter()

    def __call__(self, name: str, fn: Callable, config: Any, after: Sequence[str] = (), *, note: str = "",
                 describe: Callable[[dict], str] | None = None) -> dict:
        """Run stage ``name``; ``after``: the stages whose files it reads (it re-runs when one of them
        ran afresh); ``note`` extends its progress message, ``describe(metrics)`` its log line."""
        self.run.progress(self.done, self.total, stage=name, message=f"stage {self.done + 1}/{self.total}: {name}{note}")
        out = run_stage(self.run.path, name, fn, config, self.timings, reuse=not self.fresh.intersection(after))
        timing = self.timings[-1]
        if not timing.reused:
            self.fresh.add(name)
        detail = f"; {describe(out)}" if describe else ""
        runs = int((read_json(self.run.path / name / "stage.json", {}) or {}).get("segments", 1))
        over = f" over {runs} runs, resumed" if runs > 1 and not timing.reused else ""
        self.run.log(f"stage {name}: {'reused' if timing.reused else 'ran'} ({timing.seconds:.0f} s{over}){detail}")
        self.done += 1
        return out

    def skip(self, n: int) -> None:
        """Count ``n`` planned stages as done without running them."""
        self.done += n

    def write_report(self, models: Sequence[ModelReport], variants: dict[str, dict] | None = None,
                     rounds: Sequence[Any] = ()) -> ComparisonResult:
        """Write ``report.json`` (see the module docstring) -> the result it holds."""
        path = self.run.path / "report.json"
        result = ComparisonResult(list(models), list(self.timings), dict(variants or {}), time.perf_counter() - self.start,
                                  str(path), [to_jsonable(r) for r in rounds])
        atomic_write_json(path, {**to_jsonable(result), "summary": result.summary_rows(), "drops": result.drop_rows(),
                                 "complete": self.done >= self.total})
        return result
