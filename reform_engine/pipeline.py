"""The whole REFORM loop as one job: train base -> select influential -> decode variants -> filter
inversions -> retrain -> evaluate robustness, base vs retrained vs ablations.

Every stage is an ordinary job in its own sub-directory of the pipeline's run directory
(``base/``, ``influence/``, ``variants_lowest_loss/``, ``retrain_reform/``, ``robustness_base/``, ...),
run through ``stages.Stages``: a stage whose directory already holds a succeeded run of the same config
is reused, not re-run, so a killed pipeline picks up where it stopped and a long base training can be
shared between pipelines. In this job every inversion counts as approved (``approved`` swaps in a curated file).

Models compared:
  base     the RM trained on the original pairs
  reform   retrained on original + inversions decoded from the lowest-loss p% (the method)
  random   the same with inversions decoded from a random p% (ablation: does influence matter?)
  no_aug   fine-tune mode only: the same extra epochs on the original pairs alone (ablation: is it
           just more training?). In scratch mode the base already is the no-augmentation model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .data import DEMO_PATH
from .influence import InfluenceConfig, find_influential
from .inversions import GenerateVariantsConfig, generate_variants
from .models import DEFAULT_MODEL
from .perturbations import PERTURBATIONS
from .robustness import RobustnessConfig, evaluate_robustness
from .runs import job_run
from .runtime import set_cpu_threads
from .stages import ComparisonResult, ModelReport, Stages, check_retrain, retrain_config
from .training import TrainRewardConfig, train_reward_model
from .trunk_cache import DEFAULT_CAP_GB


@dataclass
class PipelineConfig:
    # data: the demo set split into train / held-out rows by default
    data: str = str(DEMO_PATH)
    train_rows: str = "0:132"
    eval_data: str = ""                     # '' = the same file as data
    eval_rows: str = "132:"
    # base reward model
    base_rm: str = ""                       # an existing checkpoint to start from; '' = train one here
    model: str = DEFAULT_MODEL
    lora_layers: int = 8
    max_length: int = 320
    batch_size: int = 8
    lr: float = 2e-4
    epochs: int = 2
    seed: int = 0
    # influential selection (REFORM: the lowest-loss 5%)
    fraction: float = 0.05
    # controlled decoding
    policy: str = DEFAULT_MODEL
    directions: str = "both"
    k: int = 5
    alpha: float = 1.0
    temperature: float = 0.0
    max_new_tokens: int = 64
    decode_batch_size: int = 4
    approved: str = ""                      # a file of curated pairs to use instead of every inversion (lowest-loss arm)
    # retraining
    retrain: str = "scratch"                # scratch: same hyperparameters and seed as the base (the method's default);
                                            # finetune: continue the base RM on original + new pairs
    finetune_epochs: int = 1
    finetune_lr: float = 0.0                # 0 = lr
    replay: int = 0                         # finetune: a seeded sample of this many original pairs (0 = all of them)
    # ablations
    ablate_random: bool = True              # augmentation from a random p% instead of the lowest-loss p%
    ablate_no_augment: bool = True          # finetune: the same extra epochs without new pairs
    # evaluation
    perturbations: str = ",".join(PERTURBATIONS)
    eval_max_length: int = 1024
    # runtime
    device: str = "auto"
    dtype: str = "float32"
    threads: int = 0
    trust_remote_code: bool = False         # let code shipped with the models run (auto_map): only for models you trust
    trunk_cache: str = "auto"               # 'auto': one run_dir/trunk_cache shared by every stage (only new texts pay
                                            # for the frozen layers); 'off'; or directories (trunk_cache.py)
    trunk_cache_gb: float = DEFAULT_CAP_GB  # cap on what each stage writes there

    def __post_init__(self):
        check_retrain("retrain", self.retrain, self.finetune_epochs, self.finetune_lr, self.replay)
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction={self.fraction}: use a share in (0, 1], e.g. 0.05")
        # validate every stage's knobs now, not an hour into the run
        self.train_config(), self.variants_config("lowest_loss", "x"), self.robustness_config("x")

    def train_config(self, **overrides) -> TrainRewardConfig:
        fields = ("data", "train_rows", "model", "lora_layers", "max_length", "batch_size", "lr", "epochs", "seed",
                  "device", "dtype", "threads", "trust_remote_code", "trunk_cache", "trunk_cache_gb")
        return TrainRewardConfig(**{**{f: getattr(self, f) for f in fields}, **overrides})

    def retrain_config(self, base_rm: str, augment: str) -> TrainRewardConfig:
        return retrain_config(self.train_config(), self.retrain, base_rm, augment, finetune_epochs=self.finetune_epochs,
                              finetune_lr=self.finetune_lr, replay=self.replay)

    def variants_config(self, strategy: str, base_rm: str, scored: str = "") -> GenerateVariantsConfig:
        return GenerateVariantsConfig(reward_model=base_rm, data=self.data, rows=self.train_rows, fraction=self.fraction,
                                      strategy=strategy, directions=self.directions, scored=scored, policy=self.policy,
                                      k=self.k, alpha=self.alpha, temperature=self.temperature,
                                      max_new_tokens=self.max_new_tokens, seed=self.seed, batch_size=self.decode_batch_size,
                                      max_length=self.eval_max_length, device=self.device, dtype=self.dtype,
                                      threads=self.threads, trust_remote_code=self.trust_remote_code)

    def robustness_config(self, rm: str) -> RobustnessConfig:
        return RobustnessConfig(reward_model=rm, data=self.eval_data or self.data, rows=self.eval_rows,
                                perturbations=self.perturbations, seed=self.seed, max_length=self.eval_max_length,
                                device=self.device, dtype=self.dtype, threads=self.threads,
                                trust_remote_code=self.trust_remote_code, trunk_cache=self.trunk_cache,
                                trunk_cache_gb=self.trunk_cache_gb)


def _count_lines(path: str) -> int:
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def run_pipeline(config: PipelineConfig, run_dir: str | Path) -> ComparisonResult:
    """The REFORM loop end to end; writes ``report.json`` (models, stages, tables) in ``run_dir``."""
    run_dir = Path(run_dir)
    with job_run(run_dir, config, "starting") as run:
        set_cpu_threads(config.threads)
        if config.trunk_cache == "auto":  # every stage reads and writes one cache
            config = dataclasses.replace(config, trunk_cache=str(run_dir / "trunk_cache"))
        strategies = ["lowest_loss"] + (["random"] if config.ablate_random else [])
        no_aug = config.ablate_no_augment and config.retrain == "finetune"
        stages = Stages(run, total=(0 if config.base_rm else 1) + 2 + 3 * len(strategies) + 2 * no_aug)
        models: list[ModelReport] = []
        variants: dict[str, dict] = {}

        def evaluate(arm: str, ckpt: str, n: int, after: str) -> None:
            rob = stages(f"robustness_{arm}", evaluate_robustness, config.robustness_config(ckpt), (after,))
            models.append(ModelReport.from_robustness(arm, ckpt, n, rob))
            stages.write_report(models, variants)  # after every model, so a long run shows its results as they come

        # arm by arm, the method first, so the headline comparison exists before the ablations run
        base_rm = config.base_rm or stages("base", train_reward_model, config.train_config())["checkpoint"]
        influence = stages("influence", find_influential, InfluenceConfig(
            reward_model=base_rm, data=config.data, rows=config.train_rows, fraction=config.fraction,
            max_length=config.eval_max_length, device=config.device, dtype=config.dtype, threads=config.threads,
            trust_remote_code=config.trust_remote_code, trunk_cache=config.trunk_cache,
            trunk_cache_gb=config.trunk_cache_gb), ("base",))
        evaluate("base", base_rm, 0, "base")
        for strategy, arm in zip(strategies, ("reform", "random")):
            out = stages(f"variants_{strategy}", generate_variants,
                        config.variants_config(strategy, base_rm, influence["scored_path"]), ("influence",))
            variants[strategy] = out["stats"]
            path = config.approved if arm == "reform" and config.approved else out["augment_path"]
            n = _count_lines(path)
            if n == 0:
                run.log(f"{arm}: no inversions to add; the retrained model would equal the base — skipped")
                stages.skip(2)
                continue
            ckpt = stages(f"retrain_{arm}", train_reward_model, config.retrain_config(base_rm, path),
                         (f"variants_{strategy}",))["checkpoint"]
            evaluate(arm, ckpt, n, f"retrain_{arm}")
        if no_aug:
            ckpt = stages("retrain_no_aug", train_reward_model, config.retrain_config(base_rm, ""), ("base",))["checkpoint"]
            evaluate("no_aug", ckpt, 0, "retrain_no_aug")
        result = stages.write_report(models, variants)
        run.write_metrics(result)
        reform = next((m for m in models if m.name == "reform"), None)
        message = f"reform mean drop {reform.mean_drop:+.3f} vs base {models[0].mean_drop:+.3f}" if reform else "no inversions found"
        run.set_status("succeeded", progress=1.0, step=stages.total, total=stages.total, message=message)
        return result
