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
  reform_filtered / reform_unfiltered
           with ``ablate_appropriateness``: the reform arm with the other choice of ``filter_inappropriate``
           (pairs whose "lower" variant complies with a harmful request left out, or kept), so a run
           reports both, each with its number of added pairs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .configs import nested, setting
from .data import parse_rows
from .influence import InfluenceConfig, find_influential
from .inversions import GenerateVariantsConfig, generate_variants
from .robustness import RobustnessConfig, evaluate_robustness, robustness_stage
from .runs import RunDir, job
from .runtime import Runtime
from .stages import ComparisonResult, ModelReport, RetrainRecipe, Stages
from .training import TrainRewardConfig, train_reward_model

DEMO_SPLIT = ("0:132", "132:")   # the demo set's training and held-out rows


@dataclass
class PipelineConfig:
    # the base reward model
    base_rm: str = setting("", "an existing checkpoint to start from; '' = train one here (base)")
    base: TrainRewardConfig = nested(lambda: TrainRewardConfig(train_rows=DEMO_SPLIT[0], epochs=2),
                                     "the base RM's training; its data and train_rows are the pairs every stage works on",
                                     set_by_job=("runtime",))
    # influential selection and controlled decoding
    variants: GenerateVariantsConfig = nested(lambda: GenerateVariantsConfig(reward_model=""),
                                              "the influential p% and the decoding of variants from it (its fraction and "
                                              "max_length also serve the influence stage)",
                                              set_by_job=("reward_model", "data", "rows", "strategy", "scored", "runtime"))
    approved: str = setting("", "a file of curated pairs to use instead of every inversion (the lowest-loss arm)")
    # retraining and its ablations
    retrain: RetrainRecipe = nested(RetrainRecipe, "how the base is retrained on original + new pairs")
    ablate_random: bool = setting(True, "also augment from a random p% instead of the lowest-loss p%")
    ablate_no_augment: bool = setting(True, "finetune: also the same extra epochs without new pairs")
    filter_inappropriate: bool = setting(False, "the reform and random arms train only on pairs whose variant is not judged "
                                                "inappropriate (needs variants.appropriateness.source on)")
    ablate_appropriateness: bool = setting(False, "also the reform arm with the other choice of filter_inappropriate "
                                                  "(reform_unfiltered or reform_filtered), to report both")
    # evaluation
    eval_data: str = setting("", "held-out pairs ('' = the base's data)")
    eval_rows: str = setting(DEMO_SPLIT[1], "'a:b' held-out rows of eval_data")
    robustness: RobustnessConfig = robustness_stage("the robustness of every compared model on the held-out pairs")
    runtime: Runtime = nested(Runtime, "every stage's device, dtype, threads, seed, remote-code leave, trunk cache (auto: one)")

    def __post_init__(self):
        parse_rows(self.eval_rows)
        if (self.filter_inappropriate or self.ablate_appropriateness) and not self.variants.appropriateness.enabled:
            raise ValueError("filter_inappropriate and ablate_appropriateness need the variants' appropriateness judged: set "
                             "variants.appropriateness.source to rules, judge or both")
        if (self.filter_inappropriate or self.ablate_appropriateness) and self.approved:
            raise ValueError("approved is a curated file, already reviewed: leave filter_inappropriate and ablate_appropriateness "
                             "off with it (the Curation page hides inappropriate variants)")
        # every stage runs as the pipeline does, on the pipeline's data
        self.base = dataclasses.replace(self.base, runtime=self.runtime)
        self.variants = dataclasses.replace(self.variants, data=self.base.data, rows=self.base.train_rows, runtime=self.runtime)
        self.robustness = dataclasses.replace(self.robustness, data=self.eval_data or self.base.data, rows=self.eval_rows,
                                              runtime=self.runtime)

    def train_config(self) -> TrainRewardConfig:
        return self.base

    def retrain_config(self, base_rm: str, augment: str) -> TrainRewardConfig:
        return self.retrain.training_config(self.base, base_rm, augment)

    def influence_config(self, base_rm: str) -> InfluenceConfig:
        return InfluenceConfig(reward_model=base_rm, data=self.base.data, rows=self.base.train_rows,
                               fraction=self.variants.fraction, max_length=self.variants.max_length, runtime=self.runtime)

    def variants_config(self, strategy: str, base_rm: str, scored: str = "") -> GenerateVariantsConfig:
        return dataclasses.replace(self.variants, reward_model=base_rm, strategy=strategy, scored=scored)

    def robustness_config(self, rm: str) -> RobustnessConfig:
        return dataclasses.replace(self.robustness, reward_model=rm)


def _count_lines(path: str) -> int:
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def _outcome(result: ComparisonResult) -> str:
    reform = next((m for m in result.models if m.name == "reform"), None)
    if reform is None:
        return "no inversions found"
    return f"reform mean drop {reform.mean_drop:+.3f} vs base {result.models[0].mean_drop:+.3f}"


@job("starting", done=_outcome)
def run_pipeline(config: PipelineConfig, run: RunDir) -> ComparisonResult:
    """The REFORM loop end to end; writes ``report.json`` (models, stages, tables) in ``run_dir``."""
    if config.runtime.trunk_cache == "auto":  # one cache for every stage: only new texts pay for the frozen layers
        shared = dataclasses.replace(config.runtime, trunk_cache=str(run.path / "trunk_cache"))
        config = dataclasses.replace(config, runtime=shared)
    strategies = ["lowest_loss"] + (["random"] if config.ablate_random else [])
    no_aug = config.ablate_no_augment and config.retrain.mode == "finetune"
    stages = Stages(run, total=(0 if config.base_rm else 1) + 2 + 3 * len(strategies) + 2 * no_aug
                    + 2 * config.ablate_appropriateness)
    models: list[ModelReport] = []
    variants: dict[str, dict] = {}

    def evaluate(arm: str, ckpt: str, n: int, after: str) -> None:
        rob = stages(f"robustness_{arm}", evaluate_robustness, config.robustness_config(ckpt), (after,))
        models.append(ModelReport.from_robustness(arm, ckpt, n, rob, run.path / f"robustness_{arm}", run.path / "robustness_base",
                                                  seed=config.runtime.seed))
        stages.write_report(models, variants)  # after every model, so a long run shows its results as they come

    # arm by arm, the method first, so the headline comparison exists before the ablations run
    base_rm = config.base_rm or stages("base", train_reward_model, config.train_config())["checkpoint"]
    influence = stages("influence", find_influential, config.influence_config(base_rm), ("base",))
    evaluate("base", base_rm, 0, "base")
    def augment(arm: str, path: str, strategy: str) -> None:
        n = _count_lines(path)
        if n == 0:
            run.log(f"{arm}: no inversions to add; the retrained model would equal the base — skipped")
            stages.skip(2)
            return
        ckpt = stages(f"retrain_{arm}", train_reward_model, config.retrain_config(base_rm, path),
                      (f"variants_{strategy}",))["checkpoint"]
        evaluate(arm, ckpt, n, f"retrain_{arm}")

    def pairs_of(out: dict, filtered: bool) -> str:
        return out["appropriate_augment_path"] if filtered else out["augment_path"]

    for strategy, arm in zip(strategies, ("reform", "random")):
        out = stages(f"variants_{strategy}", generate_variants,
                     config.variants_config(strategy, base_rm, influence["scored_path"]), ("influence",))
        variants[strategy] = out["stats"]
        augment(arm, config.approved if arm == "reform" and config.approved else pairs_of(out, config.filter_inappropriate),
                strategy)
        if arm == "reform" and config.ablate_appropriateness:
            other = "reform_unfiltered" if config.filter_inappropriate else "reform_filtered"
            augment(other, pairs_of(out, not config.filter_inappropriate), strategy)
    if no_aug:
        ckpt = stages("retrain_no_aug", train_reward_model, config.retrain_config(base_rm, ""), ("base",))["checkpoint"]
        evaluate("no_aug", ckpt, 0, "retrain_no_aug")
    return stages.write_report(models, variants)
