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
import json
from dataclasses import dataclass
from pathlib import Path

from .data import parse_rows
from .perturbations import PERTURBATIONS
from .reward_model import SPEC_FILE, RewardModelSpec
from .robustness import RobustnessConfig, evaluate_robustness
from .runs import job_run, read_json
from .runtime import set_cpu_threads
from .stages import ComparisonResult, ModelReport, Stages, check_retrain, retrain_config
from .training import TrainRewardConfig, train_reward_model
from .trunk_cache import DEFAULT_CAP_GB, run_cache_dirs


# --------------------------------------------------------------------------- the base's recipe

def base_training_config(base_rm: str | Path) -> TrainRewardConfig | None:
    """The TrainRewardConfig that produced checkpoint ``base_rm`` (the ``config.json`` of the run
    directory holding it, as train-rm and the pipeline's base stage write), or None when there is none."""
    saved = read_json(Path(base_rm).expanduser() / ".." / "config.json")
    if not isinstance(saved, dict) or "model" not in saved or "lr" not in saved:
        return None
    known = {f.name for f in dataclasses.fields(TrainRewardConfig)}
    # remote code is allowed by whoever starts the retraining, never by a file beside the checkpoint
    return TrainRewardConfig(**{k: v for k, v in saved.items() if k in known and k != "trust_remote_code"})


def _spec_training_config(base_rm: Path) -> TrainRewardConfig:
    """A recipe for a checkpoint trained elsewhere: the model part from its spec, the rest defaults."""
    try:
        spec = RewardModelSpec(**json.loads((base_rm / SPEC_FILE).read_text()))
    except FileNotFoundError:
        raise ValueError(f"{base_rm} is not a reward-model checkpoint (no {SPEC_FILE}); give the checkpoint/ directory "
                         "a train-rm run wrote") from None
    return TrainRewardConfig(model=spec.base_model, finetune=spec.finetune, lora_r=spec.lora_r, lora_alpha=spec.lora_alpha,
                             lora_dropout=spec.lora_dropout, lora_layers=spec.lora_layers or 0,
                             use_chat_template=spec.use_chat_template, max_length=spec.max_length)


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
    """The rows after a training range 'a:b' ('b:'), or '' when training took everything to the end."""
    stop = parse_rows(train_rows).stop
    return f"{stop}:" if stop is not None else ""


# --------------------------------------------------------------------------- the job

@dataclass
class RetrainConfig:
    # what
    base_rm: str                            # the base checkpoint directory
    augment_data: str                       # the approved pairs, TRL rows (curation.export_approved)
    mode: str = "scratch"                   # scratch: the base's recipe and seed on original + approved pairs;
                                            # finetune: continue the base on them
    data: str = ""                          # the original pairs; '' = the base's own (from its run's config.json)
    train_rows: str = ""                    # with data: the rows to train on ('' = all)
    # finetune mode
    finetune_epochs: int = 1
    finetune_lr: float = 0.0                # 0 = the base's lr
    replay: int = 0                         # a seeded sample of this many original pairs (0 = all of them)
    # evaluation: the same held-out pairs for base and retrained
    eval_data: str = ""                     # '' = the training data
    eval_rows: str = ""                     # held-out rows, e.g. '132:'; '' = all rows (then it measures training fit)
    perturbations: str = ",".join(PERTURBATIONS)
    eval_max_length: int = 1024
    seed: int = 0                           # perturbation seed
    # runtime
    device: str = "auto"
    dtype: str = "float32"
    threads: int = 0
    trust_remote_code: bool = False         # let code shipped with the models run (auto_map): only for models you trust
    trunk_cache: str = "auto"               # 'auto': run_dir/trunk_cache for every stage, reading the base run's too,
                                            # so only the new pairs pay for the frozen layers; 'off'; or directories
    trunk_cache_gb: float = DEFAULT_CAP_GB  # cap on what each stage writes

    def __post_init__(self):
        if not self.base_rm.strip():
            raise ValueError("base_rm is empty; give the checkpoint directory of the RM to improve")
        if not self.augment_data.strip():
            raise ValueError("augment_data is empty; export the approved pairs first (Store.export_trl)")
        check_retrain("mode", self.mode, self.finetune_epochs, self.finetune_lr, self.replay)
        for rows in (self.train_rows, self.eval_rows):
            parse_rows(rows)
        RobustnessConfig(reward_model=self.base_rm, perturbations=self.perturbations)  # checks the names

    def training_config(self) -> TrainRewardConfig:
        """The retraining run's config. Raises ValueError when the base's recipe is unknown and no data is given."""
        base = base_recipe(self.base_rm, self.data, self.train_rows)
        return retrain_config(base, self.mode, str(Path(self.base_rm).expanduser()), self.augment_data,
                              finetune_epochs=self.finetune_epochs, finetune_lr=self.finetune_lr, replay=self.replay,
                              device=self.device, dtype=self.dtype, threads=self.threads,
                              trust_remote_code=self.trust_remote_code, trunk_cache=self.trunk_cache,
                              trunk_cache_gb=self.trunk_cache_gb)

    def robustness_config(self, rm: str, training: TrainRewardConfig) -> RobustnessConfig:
        return RobustnessConfig(reward_model=rm, data=self.eval_data or training.data, rows=self.eval_rows,
                                perturbations=self.perturbations, seed=self.seed, max_length=self.eval_max_length,
                                device=self.device, dtype=self.dtype, threads=self.threads,
                                trust_remote_code=self.trust_remote_code, trunk_cache=self.trunk_cache,
                                trunk_cache_gb=self.trunk_cache_gb)


def _count_pairs(path: str) -> int:
    from .data import load_preferences

    return len(load_preferences(path, skip_invalid=True).pairs)


def run_retrain(config: RetrainConfig, run_dir: str | Path) -> ComparisonResult:
    """Retrain, then evaluate base and retrained; writes ``report.json`` (the pipeline's format, models
    ``base`` and ``retrained``) in ``run_dir``."""
    run_dir = Path(run_dir)
    with job_run(run_dir, config, "starting") as run:
        set_cpu_threads(config.threads)
        if config.trunk_cache == "auto":  # one cache for the stages, reading the base's: only new texts pay
            shared = [run_dir / "trunk_cache", *run_cache_dirs(config.base_rm)]
            config = dataclasses.replace(config, trunk_cache=",".join(map(str, dict.fromkeys(shared))))
        stages = Stages(run, total=3)
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
            models.append(ModelReport.from_robustness(arm, ckpt, n, rob))
        result = stages.write_report(models)
        run.write_metrics(result)
        base, new = models
        run.set_status("succeeded", progress=1.0, step=stages.total, total=stages.total,
                       message=f"mean drop {new.mean_drop:+.3f} retrained vs {base.mean_drop:+.3f} base; "
                               f"clean accuracy {new.clean_accuracy:.3f} vs {base.clean_accuracy:.3f}")
        return result
