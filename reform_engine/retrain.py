"""Retrain a reward model on the pairs a person approved, and compare it with its base: one job that
trains the RM on its original pairs plus the curated ones, then measures the robustness of the base
and of the retrained RM on the same held-out pairs.

Retraining follows the pipeline's two modes: ``scratch`` repeats the base's own recipe (its run's
config.json: backbone, hyperparameters, seed) on the augmented data, ``finetune`` continues the base
checkpoint for a few epochs (one recipe with the pipeline's: ``stages.retrain_config``). The job's stages
are sub-directories (``retrain/``, ``robustness_base/``, ``robustness_retrained/``) run through
``stages.Stages``, so a re-run resumes, and ``report.json`` is the pipeline's: one reader serves both.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .configs import JobConfigError, config_from_dict, nested, required, setting
from .data import overlapping_rows, parse_rows, same_source
from .reward_model import SPEC_FILE, read_spec
from .robustness import RobustnessConfig, evaluate_robustness, robustness_stage
from .runs import RunDir, job, read_json
from .runtime import Runtime
from .stages import ComparisonResult, ModelReport, RetrainRecipe, Stages
from .training import TrainRewardConfig, train_reward_model
from .trunk_cache import run_cache_dirs


# --------------------------------------------------------------------------- the base's recipe

def base_training_config(base_rm: str | Path) -> TrainRewardConfig | None:
    """The TrainRewardConfig that produced checkpoint ``base_rm`` (the ``config.json`` of the run
    directory holding it, as train-rm and the pipeline's base stage write), or None when there is none
    (or it is one this version cannot read, such as the flat files of runs before nested configs)."""
    saved = read_json(Path(base_rm).expanduser() / ".." / "config.json")
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict) or "lr" not in saved:
        return None
    try:
        config = config_from_dict(TrainRewardConfig, saved)
    except (JobConfigError, TypeError, ValueError):
        return None
    # remote code is allowed by whoever starts the retraining, never by a file beside the checkpoint
    return dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, trust_remote_code=False))


def _spec_training_config(base_rm: Path) -> TrainRewardConfig:
    """A recipe for a checkpoint trained elsewhere: the model part from its spec, the rest defaults."""
    if not (base_rm / SPEC_FILE).is_file():
        raise ValueError(f"{base_rm} is not a reward-model checkpoint (no {SPEC_FILE}); give the checkpoint/ directory "
                         "a train-rm run wrote")
    return TrainRewardConfig(model=dataclasses.replace(read_spec(base_rm), trust_remote_code=False))


def base_recipe(base_rm: str | Path, data: str = "", train_rows: str = "") -> TrainRewardConfig:
    """The recipe that trained checkpoint ``base_rm`` (its run's config.json), its data replaced by
    ``data`` / ``train_rows`` when given; for a checkpoint trained elsewhere, its spec with ``data``,
    which is then required. Raises ValueError saying what to give."""
    base_dir = Path(base_rm).expanduser()
    base = base_training_config(base_dir)
    if base is None:
        base = _spec_training_config(base_dir)
        if not data:
            raise ValueError(f"no training config beside {base_dir} (it was not trained here), so its training data "
                             "is unknown; give data (and train_rows): the pairs it was trained on")
    return dataclasses.replace(base, data=data, train_rows=train_rows) if data else base


def held_out_rows(train_rows: str) -> str:
    """The rows after a training range 'a:b' ('b:'), '' when training took everything to the end, or
    the other folds of a training fold spec."""
    return parse_rows(train_rows).complement()


@dataclass(kw_only=True)  # keyword-only: the job configs that hold these fields have required fields of their own
class BaseRetraining:
    """What every job that retrains a base RM shares: the base's own training data unless replaced, the
    held-out pairs its RMs are measured on (which rows are held out by default is each job's own), and
    the job's runtime, whose seed the retraining does not take: it keeps the base's."""

    data: str = setting("", "the original pairs; '' = the base's own (from its run's config.json)")
    train_rows: str = setting("", "with data: the rows to train on ('' = all)")
    eval_data: str = setting("", "held-out pairs ('' = the training data)")
    runtime: Runtime = nested(Runtime, "device, dtype, threads, seed (of the perturbations, and of the attacks in "
                                       "adv-rounds; the retraining keeps the base's seed), remote-code leave; trunk cache "
                                       "'auto': one run_dir/trunk_cache for every stage, reading the base run's too")

    def recipe_of(self, base_rm: str | Path) -> TrainRewardConfig:
        """The recipe that trained ``base_rm``, on this job's data when it names some (:func:`base_recipe`)."""
        return base_recipe(base_rm, self.data, self.train_rows)

    def retraining_runtime(self, recipe: TrainRewardConfig) -> Runtime:
        """This job's placement (device, dtype, threads, cache) with the seed of the base's ``recipe``."""
        return dataclasses.replace(self.runtime, seed=recipe.runtime.seed)


# --------------------------------------------------------------------------- the job

@dataclass
class RetrainConfig(BaseRetraining):
    # what (the original and held-out pairs, the runtime: BaseRetraining)
    base_rm: str = required("the base checkpoint directory (the RM to improve)")
    augment_data: str = required("the approved pairs, TRL rows (curation.export_approved)")
    retrain: RetrainRecipe = nested(RetrainRecipe, "how the base is retrained on original + approved pairs")
    # evaluation: the same held-out pairs for base and retrained
    eval_rows: str = setting("", "held-out rows, e.g. '132:'; '' = all rows (then it measures training fit)")
    robustness: RobustnessConfig = robustness_stage("the robustness of base and retrained on the held-out pairs")

    def __post_init__(self):
        if not self.base_rm.strip():
            raise ValueError("base_rm is empty; give the checkpoint directory of the RM to improve")
        if not self.augment_data.strip():
            raise ValueError("augment_data is empty; export the approved pairs first (Store.export_trl)")
        parse_rows(self.train_rows)
        self.robustness = dataclasses.replace(self.robustness, data=self.eval_data, rows=self.eval_rows, runtime=self.runtime)

    def training_config(self) -> TrainRewardConfig:
        """The retraining run's config. Raises ValueError when the base's recipe is unknown and no data is given."""
        base = self.recipe_of(self.base_rm)
        return self.retrain.training_config(base, str(Path(self.base_rm).expanduser()), self.augment_data,
                                            runtime=self.retraining_runtime(base))

    def refuse_overlap(self, training: TrainRewardConfig | None = None) -> None:
        """Raise ValueError when the held-out rows include pairs the base RM was trained on (its run's
        config.json, or the data / train_rows given): both RMs would be scored on their own training
        pairs, which measures fit, not robustness."""
        training = training or base_recipe(self.base_rm, self.data, self.train_rows)
        eval_data = self.eval_data or training.data
        if not same_source(eval_data, training.data):
            return
        shared = overlapping_rows(self.eval_rows, training.train_rows)
        if shared:
            source = Path(self.base_rm).expanduser() / ".." / "config.json" if not self.data else "the data and train_rows given"
            raise ValueError(f"the held-out rows {self.eval_rows or 'all'} of {eval_data} overlap the base RM's training rows "
                             f"{training.train_rows or 'all'} (rows {shared}, from {source}): base and retrained would be "
                             f"evaluated on pairs they were trained on. Give held-out rows outside them"
                             + (f", e.g. '{held_out_rows(training.train_rows)}'" if held_out_rows(training.train_rows) else
                                ", or other held-out data (eval_data)"))

    def robustness_config(self, rm: str, training: TrainRewardConfig) -> RobustnessConfig:
        return dataclasses.replace(self.robustness, reward_model=rm, data=self.eval_data or training.data)


def _count_pairs(path: str) -> int:
    from .data import load_preferences

    return len(load_preferences(path, skip_invalid=True).pairs)


def _outcome(result: ComparisonResult) -> str:
    base, new = result.models
    return (f"mean drop {new.mean_drop:+.3f} retrained vs {base.mean_drop:+.3f} base; "
            f"clean accuracy {new.clean_accuracy:.3f} vs {base.clean_accuracy:.3f}")


@job("starting", done=_outcome)
def run_retrain(config: RetrainConfig, run: RunDir) -> ComparisonResult:
    """Retrain, then evaluate base and retrained; writes ``report.json`` (the pipeline's format, models
    ``base`` and ``retrained``) in ``run_dir``."""
    if config.runtime.trunk_cache == "auto":  # one cache for the stages, reading the base's: only new texts pay
        shared = [run.path / "trunk_cache", *run_cache_dirs(config.base_rm)]
        config = dataclasses.replace(config, runtime=dataclasses.replace(
            config.runtime, trunk_cache=",".join(map(str, dict.fromkeys(shared)))))
    stages = Stages(run, total=3)
    config.refuse_overlap()
    training = config.training_config()
    n_new = _count_pairs(config.augment_data)
    if n_new == 0:
        raise ValueError(f"{config.augment_data} holds no pairs; approve some inversions and export them first")
    trained = stages("retrain", train_reward_model, training, note=f" ({n_new} approved pairs added)",
                     describe=lambda m: f"{m['train_pairs']} training pairs ({n_new} approved), {m['steps']} steps")
    models = []
    for arm, ckpt, n in (("base", str(Path(config.base_rm).expanduser()), 0), ("retrained", trained["checkpoint"], n_new)):
        # the base's evaluation does not depend on the retraining; the retrained one's reads its checkpoint
        rob = stages(f"robustness_{arm}", evaluate_robustness, config.robustness_config(ckpt, training),
                     () if arm == "base" else ("retrain",),
                     describe=lambda m: f"clean win rate {m['clean_win_rate']:.3f}, mean drop {m['mean_drop']:+.3f}")
        models.append(ModelReport.from_robustness(arm, ckpt, n, rob, run.path / f"robustness_{arm}", run.path / "robustness_base",
                                                  seed=config.runtime.seed))
    return stages.write_report(models)
