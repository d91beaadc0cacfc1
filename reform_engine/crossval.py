"""K-fold cross-validation of a reward-model recipe, with the references it has to beat.

One contiguous split overstates an RM: the tail of the shared HH file is easier than random HH pairs.
So a recipe is judged over K folds drawn at random over the rows (``data.fold_of``: a row's fold is a
hash of its number and the draw seed, fixed before any run). For each fold k the recipe trains on the
other folds and is scored on fold k; beside it, on the same held-out pairs:

- the length rules (always the longer response, always the shorter), which read no text;
- a linear probe on the frozen backbone's features (``probe.py``), fitted on the same training folds.

Reported: each fold's accuracies, their mean and spread over folds, the out-of-fold accuracy pooled
over every pair with a bootstrap 95% interval, and the paired interval of RM minus probe on the pooled
pairs. Each fold's training is a stage (``stages.py``): a killed run resumes at the fold it was in, and
``--only-folds`` spreads a long run over several sessions. The folds share one trunk cache, so the
frozen lower layers of a sequence seen by one fold's training are not recomputed by the next.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .configs import nested, setting
from .data import load_preferences, select_rows
from .evaluation import Interval, bootstrap_mean, pair_wins, paired_bootstrap_diff
from .probe import fit_probe, pair_features, probe_wins
from .reward_model import RewardModelSpec, build_reward_model, load_reward_model
from .runs import RunDir, atomic_torch_save, atomic_write_json, job, read_json, read_torch
from .runtime import Runtime
from .scoring import score_pairs
from .config_keys import comparable
from .stages import Stages, finished
from .training import TrainRewardConfig, train_reward_model
from .trunk_cache import finish, open_trunk_cache

EVAL_MAX_LENGTH = 1024   # held-out pairs are scored as train-rm's own evaluation scores them


@dataclass
class CrossValConfig:
    recipe: TrainRewardConfig = nested(TrainRewardConfig, "the recipe every fold trains: data, model, epochs, lr ...",
                                       set_by_job=("train_rows", "eval_data", "eval_rows", "runtime"))
    folds: int = setting(5, "K: the rows are split into K random folds; each is held out once")
    fold_seed: int = setting(0, "which random draw of folds; fix it before the first run and never tune it")
    only_folds: str = setting("", "comma-separated folds to run now ('' = all); the report covers the folds done so far")
    probe: bool = setting(True, "also fit a linear probe on the frozen backbone's last-token features in the same folds")
    probe_l2: float = setting(1.0, "the probe's L2 penalty (fixed in advance, not tuned on the folds)")
    runtime: Runtime = nested(Runtime, "device, dtype, threads, seed of every fold's training, trunk cache")

    def __post_init__(self):
        if self.folds < 2:
            raise ValueError(f"folds={self.folds} must be >= 2")
        if self.probe_l2 <= 0:
            raise ValueError(f"probe_l2={self.probe_l2} must be > 0")
        if self.recipe.train_rows:
            raise ValueError(f"recipe.train_rows={self.recipe.train_rows!r}: cross-validation splits all rows of the data "
                             "into folds itself; leave it empty (put the rows you want in a file of their own)")
        self.chosen_folds()

    def chosen_folds(self) -> list[int]:
        if not self.only_folds.strip():
            return list(range(self.folds))
        try:
            chosen = sorted({int(k) for k in self.only_folds.split(",") if k.strip()})
        except ValueError as exc:
            raise ValueError(f"only_folds={self.only_folds!r}: write fold numbers separated by commas, e.g. '0,1'") from exc
        if not chosen or chosen[0] < 0 or chosen[-1] >= self.folds:
            raise ValueError(f"only_folds={self.only_folds!r}: folds run from 0 to {self.folds - 1}")
        return chosen

    def rows(self, k: int, held_out: bool) -> str:
        return f"fold{'=' if held_out else '!='}{k}/{self.folds}@{self.fold_seed}"

    def fold_recipe(self, k: int, cache_dir: Path) -> TrainRewardConfig:
        """Fold k's training: the other folds' rows; the trunk cache in ``cache_dir`` (the run's own, shared by
        the folds) unless the setting names directories of its own (an earlier run's cache, say) or is 'off'."""
        setting = self.runtime.trunk_cache
        runtime = dataclasses.replace(self.runtime, trunk_cache=str(cache_dir) if setting.strip() == "auto" else setting)
        return dataclasses.replace(self.recipe, train_rows=self.rows(k, held_out=False), eval_data="", eval_rows="",
                                   runtime=runtime)


@dataclass
class FoldReport:
    fold: int
    train_pairs: int
    n: int                                  # held-out pairs scored
    rm_accuracy: float
    probe_accuracy: float | None
    longer_baseline: float
    shorter_baseline: float
    train_seconds: float


@dataclass
class Summary:
    mean: float
    std: float                              # over folds (ddof 1)
    pooled: Interval                        # out-of-fold accuracy over every held-out pair, bootstrap 95%


@dataclass
class CrossValResult:
    folds: list[FoldReport]
    rm: Summary
    probe: Summary | None
    longer: Summary
    shorter: Summary
    rm_minus_probe: Interval | None         # paired bootstrap over the pooled pairs
    fold_seed: int
    seed: int
    complete: bool                          # every fold of the split has run
    seconds: float
    table: list[dict] = field(default_factory=list)


def _summary(per_fold: list[float], pooled: np.ndarray, seed: int) -> Summary:
    values = np.asarray(per_fold, dtype=float)
    return Summary(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                   bootstrap_mean(pooled, seed=seed))


def _held_out_wins(config: CrossValConfig, k: int, checkpoint: str, stage_dir: Path, pairs, trunk_dir: Path,
                   fresh: bool, log) -> dict:
    """Per-pair wins of the fold's RM and of the length rules on fold ``k`` -> {pair_id: [rm, longer, shorter]},
    kept in ``heldout.json`` beside the fold's run (re-scored when its training ran afresh)."""
    path = stage_dir / "heldout.json"
    kept = None if fresh else read_json(path)
    if isinstance(kept, dict) and kept.get("checkpoint") == checkpoint:
        return kept["wins"]
    rm = load_reward_model(checkpoint, **config.runtime.load_args(), max_length=EVAL_MAX_LENGTH)
    trunk, note = open_trunk_cache(rm, setting=str(trunk_dir) if config.runtime.trunk_cache != "off" else "off",
                                   run_dir=stage_dir, cap_gb=config.runtime.trunk_cache_gb)
    scores = score_pairs(rm, pairs, max_length=EVAL_MAX_LENGTH, skip_too_long=True, trunk=trunk)
    finish(trunk, note, log)
    scored = [p for i, p in enumerate(pairs) if i not in set(scores.skipped)]
    rm_w = pair_wins(scores.r_chosen, scores.r_rejected)
    longer = pair_wins([len(p.chosen) for p in scored], [len(p.rejected) for p in scored])
    shorter = pair_wins([len(p.rejected) for p in scored], [len(p.chosen) for p in scored])
    wins = {p.pair_id: [float(a), float(b), float(c)] for p, a, b, c in zip(scored, rm_w, longer, shorter)}
    atomic_write_json(path, {"checkpoint": checkpoint, "wins": wins})
    return wins


def _features(config: CrossValConfig, run: RunDir, pairs) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Frozen last-token features of both sides of every pair -> {pair_id: (chosen, rejected)}, computed
    once for all folds (``probe_features.pt``)."""
    path = run.path / "probe_features.pt"
    spec = config.recipe.model
    key = {"base_model": spec.base_model, "max_length": EVAL_MAX_LENGTH, "data": config.recipe.data,
           "use_chat_template": spec.use_chat_template, "dtype": config.runtime.dtype}
    saved, _ = read_torch(path)
    if saved is not None and saved.get("key") == repr(key):
        return dict(zip(saved["ids"], zip(saved["chosen"], saved["rejected"])))
    run.set_status("running", message=f"probe features of {len(pairs)} pairs (the frozen backbone, once for every fold)")
    rm = build_reward_model(RewardModelSpec(base_model=spec.base_model, finetune="head", use_chat_template=spec.use_chat_template,
                                            max_length=EVAL_MAX_LENGTH), **config.runtime.load_args(),
                            seed=config.runtime.seed).eval()
    feats = pair_features(rm, pairs, max_length=EVAL_MAX_LENGTH,
                          on_progress=lambda done, total: run.set_status(
                              "running", progress=0.0, message=f"probe features: {done}/{total} responses (once for every fold)"))
    ids = [pairs[i].pair_id for i in feats.kept]
    atomic_torch_save(path, {"key": repr(key), "ids": ids, "chosen": feats.chosen, "rejected": feats.rejected})
    return dict(zip(ids, zip(feats.chosen, feats.rejected)))


@job("splitting the rows into folds", done=lambda r: f"RM {r.rm.mean:.3f} ± {r.rm.std:.3f} over {len(r.folds)} folds")
def run_crossval(config: CrossValConfig, run: RunDir) -> CrossValResult:
    """Train the recipe on K-1 folds and score it on the held-out one, for each chosen fold; the length
    rules and (``probe``) a frozen-feature probe on the same pairs."""
    start = time.perf_counter()
    data = load_preferences(config.recipe.data, skip_invalid=config.recipe.skip_invalid)
    features = _features(config, run, data.pairs) if config.probe else {}
    trunk_dir = run.path / "trunk_cache"
    chosen = config.chosen_folds()
    stages = Stages(run, total=len(chosen))
    reports, pooled = [], {}
    for k in range(config.folds):
        stage_dir, recipe = run.path / f"fold-{k}", config.fold_recipe(k, trunk_dir)
        if k in chosen:
            trained = stages(f"fold-{k}", train_reward_model, recipe, note=f" (train on the other {config.folds - 1} folds)")
        else:   # not asked for now: in the report if an earlier run of this config finished it
            trained = finished(stage_dir, recipe)
            if trained is None or not (stage_dir / "heldout.json").is_file():
                continue
        held_out = select_rows(data.pairs, config.rows(k, held_out=True))
        wins = _held_out_wins(config, k, trained["checkpoint"], stage_dir, held_out, trunk_dir,
                              fresh=f"fold-{k}" in stages.fresh, log=run.log)
        probe_acc = None
        if config.probe:
            train_ids = [p.pair_id for p in select_rows(data.pairs, config.rows(k, held_out=False)) if p.pair_id in features]
            probe = fit_probe(torch.stack([features[i][0] for i in train_ids]), torch.stack([features[i][1] for i in train_ids]),
                              l2=config.probe_l2)
            test_ids = [i for i in wins if i in features]
            p_wins = probe_wins(probe, torch.stack([features[i][0] for i in test_ids]), torch.stack([features[i][1] for i in test_ids]))
            for i, w in zip(test_ids, p_wins):
                wins[i] = wins[i][:3] + [float(w)]
            probe_acc = float(np.mean(p_wins))
        table = np.array([w[:3] for w in wins.values()])
        reports.append(FoldReport(k, trained["train_pairs"], len(wins), float(table[:, 0].mean()), probe_acc,
                                  float(table[:, 1].mean()), float(table[:, 2].mean()), float(trained["seconds"])))
        pooled.update(wins)
        run.log(f"fold {k}: RM {reports[-1].rm_accuracy:.3f}" + (f", probe {probe_acc:.3f}" if probe_acc is not None else "")
                + f", longer {reports[-1].longer_baseline:.3f} on {len(wins)} held-out pairs")
    seed = config.runtime.seed
    every = np.array([w[:3] for w in pooled.values()])
    both = np.array([w for w in pooled.values() if len(w) == 4]) if config.probe else np.empty((0, 4))
    result = CrossValResult(
        folds=reports, rm=_summary([r.rm_accuracy for r in reports], every[:, 0], seed),
        probe=_summary([r.probe_accuracy for r in reports], both[:, 3], seed) if config.probe else None,
        longer=_summary([r.longer_baseline for r in reports], every[:, 1], seed),
        shorter=_summary([r.shorter_baseline for r in reports], every[:, 2], seed),
        rm_minus_probe=paired_bootstrap_diff(both[:, 0], both[:, 3], seed=seed) if config.probe else None,
        fold_seed=config.fold_seed, seed=seed, complete=len(reports) == config.folds, seconds=time.perf_counter() - start)
    result.table = [dataclasses.asdict(r) for r in reports]
    return result



REFERENCES = (("rm", "RM (the recipe)"), ("probe", "linear probe"), ("longer", "always longer"), ("shorter", "always shorter"))


def read_report(run_dir: str | Path) -> dict | None:
    """A crossval run's results as rows a page draws -> {folds: [{fold, model, accuracy, n}], pooled:
    [{model, value, low, high, n, mean, std}], rm_minus_probe, complete, fold_seed, seed}; None before
    the run has written its metrics."""
    metrics = read_json(Path(run_dir) / "metrics.json")
    if not isinstance(metrics, dict) or "folds" not in metrics:
        return None
    column = {"rm": "rm_accuracy", "probe": "probe_accuracy", "longer": "longer_baseline", "shorter": "shorter_baseline"}
    folds = [{"fold": f["fold"], "model": label, "accuracy": f[column[key]], "n": f["n"]}
             for f in metrics["folds"] for key, label in REFERENCES if f.get(column[key]) is not None]
    pooled = [{"model": label, "value": s["pooled"]["estimate"], "low": s["pooled"]["low"], "high": s["pooled"]["high"],
               "n": s["pooled"]["n"], "mean": s["mean"], "std": s["std"]}
              for key, label in REFERENCES if (s := metrics.get(key))]
    return {"folds": folds, "pooled": pooled, "rm_minus_probe": metrics.get("rm_minus_probe"),
            "complete": metrics.get("complete", False), "fold_seed": metrics.get("fold_seed"), "seed": metrics.get("seed")}


TRAINED = ("recipe.", "runtime.")   # what the folds' models are (the recipe's own runtime is the job's, set by it)


def _settings(config: dict) -> dict[str, object]:
    """A crossval config as flat dotted settings, placement aside (config_keys.comparable), and without what the job
    fills in itself (each nested group's ``set_by_job``: the recipe's rows and runtime come from the fold)."""
    def flat(node: dict, prefix: str = "") -> dict[str, object]:
        out = {}
        for key, value in node.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out
    own = tuple(f"{f.name}.{sub}" for f in dataclasses.fields(CrossValConfig) for sub in f.metadata.get("set_by_job", ()))
    return {k: v for k, v in flat(comparable(config)).items() if not any(k == o or k.startswith(o + ".") for o in own)}


def out_of_fold_wins(run_dir: str | Path) -> tuple[dict[str, float], int]:
    """Each held-out pair's RM win (1, 0.5 for a tie, 0) from every fold a crossval run has scored, and how many
    folds that is."""
    wins, folds = {}, 0
    for path in sorted(Path(run_dir).glob("fold-*/heldout.json")):
        kept = read_json(path)
        if isinstance(kept, dict) and isinstance(kept.get("wins"), dict):
            wins.update({pair_id: float(w[0]) for pair_id, w in kept["wins"].items()})
            folds += 1
    return wins, folds


def compare_runs(candidate: str | Path, default: str | Path, *, seed: int = 0) -> dict:
    """A candidate recipe against the default, both cross-validated on the same folds of the same data ->
    {n, candidate, default, difference (paired bootstrap over the held-out pairs both runs scored), changed:
    {setting: [default's, candidate's]}, complete}. The pairs are the same pairs, so the difference is paired.
    Raises ValueError when the runs cannot be compared (other data, folds or fold draw, or no common pairs)."""
    configs = []
    for run_dir in (candidate, default):
        config = read_json(Path(run_dir) / "config.json")
        if not isinstance(config, dict) or "recipe" not in config:
            raise ValueError(f"{run_dir} is not a crossval run directory (no config.json with a recipe): pick the run "
                             "directory of a crossval job")
        configs.append(config)
    a, b = configs
    for key in ("folds", "fold_seed"):
        if a.get(key) != b.get(key):
            raise ValueError(f"the runs drew their folds differently ({key} {a.get(key)} vs {b.get(key)}): recipes are "
                             "compared on the same held-out pairs only; cross-validate the candidate with the default's folds")
    if a["recipe"].get("data") != b["recipe"].get("data"):
        raise ValueError(f"the runs read different data ({a['recipe'].get('data')} vs {b['recipe'].get('data')}): compare "
                         "recipes on the same file")
    (wins_a, folds_a), (wins_b, folds_b) = out_of_fold_wins(candidate), out_of_fold_wins(default)
    common = sorted(wins_a.keys() & wins_b.keys())
    if not common:
        raise ValueError("the two runs have no held-out pair scored by both yet: let at least one common fold finish")
    x, y = np.array([wins_a[i] for i in common]), np.array([wins_b[i] for i in common])
    flat_a, flat_b = _settings(a), _settings(b)
    changed = {k: [flat_b.get(k), flat_a.get(k)] for k in sorted(flat_a.keys() | flat_b.keys())
               if flat_a.get(k) != flat_b.get(k) and k.startswith(TRAINED)}
    complete = folds_a == folds_b == a["folds"]
    return {"n": len(common), "candidate": bootstrap_mean(x, seed=seed), "default": bootstrap_mean(y, seed=seed),
            "difference": paired_bootstrap_diff(x, y, seed=seed), "changed": changed, "complete": complete}
