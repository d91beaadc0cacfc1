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
  reform_filtered / reform_unfiltered
           with ``ablate_appropriateness``: the reform arm with the other choice of ``filter_inappropriate``
           (pairs whose "lower" variant complies with a harmful request left out, or kept), so a run
           reports both, each with its number of added pairs.
  reform_finetune / reform_scratch
           with ``ablate_retrain_mode``: the reform arm retrained the other way (``retrain.mode``'s
           other choice) on the same added pairs (ablation: fine-tune vs from scratch).
  random   the same as reform with inversions decoded from a random p% (ablation: does influence matter?)
  highest_loss
           with ``ablate_highest_loss``: inversions decoded from the highest-loss p%, the pairs the base
           gets most wrong (ablation: the seed's open question about the lowest-loss heuristic)
  random_equal / highest_loss_equal
           with ``ablate_equal_count``: the random (highest_loss) arm on a seeded sample of its pairs at the
           reform arm's count, when it has more, so that reform is compared with it pair for pair (a random
           pair is less confidently ranked and flips more often, so the same p% adds more pairs).
  random_ordered / highest_loss_ordered
           with ``ablate_ordered``: the random (highest_loss) arm on only the pairs decoded from a source pair
           the base orders right (r(y+) > r(y-) when decoded), as every lowest-loss pair is, at the reform
           arm's count (a seeded sample) when it has more. From a pair the base already orders wrong a
           variant "crosses" without the RM making a new mistake: it is the old one again. Every
           highest-loss pair is ordered wrong, so highest_loss_ordered has none and is skipped.
  no_aug   the same extra fine-tuning epochs on the original pairs alone (ablation: is it just more
           training?), whenever an arm is fine-tuned (retrain.mode finetune, or ablate_retrain_mode).
           A from-scratch retrain without new pairs is the base's recipe, data and seed again, i.e. the
           base itself, so for scratch the base row is the no-augmentation model and none is trained.

Arms run in that order, the method first. With ``bon_judge_rm`` each arm's RM then picks best-of-N
against the base's on the held-out prompts, judged by that RM (``bon_<arm>/``, best_of_n.py); the
per-arm report (reports.arm_table) reads those stages.
"""
from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path

from .best_of_n import BestOfNConfig, run_best_of_n
from .configs import nested, setting
from .data import parse_rows
from .influence import InfluenceConfig, find_influential
from .inversions import GenerateVariantsConfig, generate_variants
from .robustness import RobustnessConfig, evaluate_robustness, robustness_stage
from .runs import RunDir, atomic_write_text, job
from .runtime import Runtime
from .stages import RETRAIN_MODES, ComparisonResult, ModelReport, RetrainRecipe, Stages
from .training import TrainRewardConfig, train_reward_model

DEMO_SPLIT = ("0:132", "132:")   # the demo set's training and held-out rows
ARMS = {"lowest_loss": "reform", "random": "random", "highest_loss": "highest_loss"}   # the arm each selection builds
_BON = BestOfNConfig.__dataclass_fields__


@dataclass
class PipelineConfig:
    # the base reward model
    base_rm: str = setting("", "an existing checkpoint to start from; '' = train one here (base)")
    base: TrainRewardConfig = nested(lambda: TrainRewardConfig(train_rows=DEMO_SPLIT[0]),
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
    ablate_highest_loss: bool = setting(False, "also augment from the highest-loss p% (the pairs the base gets most wrong) "
                                               "instead of the lowest-loss p%")
    ablate_equal_count: bool = setting(False, "also the random and highest_loss arms on a seeded sample of their pairs at "
                                              "the reform arm's count (random_equal, highest_loss_equal), when they have more")
    ablate_ordered: bool = setting(False, "also the random and highest_loss arms on only the pairs decoded from source pairs "
                                          "the base orders right (a flip of a right ordering, as every lowest-loss pair is), at "
                                          "the reform arm's count when they have more (random_ordered, highest_loss_ordered)")
    ablate_retrain_mode: bool = setting(False, "also the reform arm retrained the other way (reform_finetune after scratch, "
                                               "reform_scratch after finetune) on the same added pairs")
    ablate_no_augment: bool = setting(True, "when an arm is fine-tuned: also the same extra epochs without new pairs "
                                            "(a from-scratch retrain without them is the base itself)")
    filter_inappropriate: bool = setting(False, "the reform, random and highest_loss arms train only on pairs whose variant "
                                                "is not judged inappropriate (needs variants.appropriateness.source on)")
    ablate_appropriateness: bool = setting(False, "also the reform arm with the other choice of filter_inappropriate "
                                                  "(reform_unfiltered or reform_filtered), to report both")
    # evaluation
    eval_data: str = setting("", "held-out pairs ('' = the base's data)")
    eval_rows: str = setting(DEMO_SPLIT[1], "'a:b' held-out rows of eval_data")
    robustness: RobustnessConfig = robustness_stage("the robustness of every compared model on the held-out pairs")
    # downstream quality
    bon_judge_rm: str = setting("", "a judge RM trained apart: after the arms, best-of-N picked by the base vs by each arm's RM "
                                    "on the held-out prompts, judged by it ('' = no best-of-N)")
    bon_prompts: int = setting(100, "best-of-N: the first this many held-out prompts (0 = all held-out rows)")
    bon_n: int = setting(_BON["n"].default, "best-of-N: policy samples per prompt")
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
        if self.base_rm:  # an appropriateness judge that is the given base fails now, not at the variants stage
            self.variants.appropriateness.check_independent(self.base_rm)
        if self.bon_judge_rm.strip():  # bad best-of-N knobs, or a judge that is the base, fail before anything trains
            try:
                self.bon_config(self.base_rm or "(the base trained here)", "(an arm)")
            except ValueError as exc:
                raise ValueError(f"the best-of-N stage (bon_judge_rm, bon_prompts, bon_n): {exc}") from None

    def train_config(self) -> TrainRewardConfig:
        return self.base

    def retrain_config(self, base_rm: str, augment: str, mode: str = "") -> TrainRewardConfig:
        """The retraining of the base on ``augment``; ``mode``: another than ``retrain.mode`` (the ablation)."""
        recipe = dataclasses.replace(self.retrain, mode=mode) if mode else self.retrain
        return recipe.training_config(self.base, base_rm, augment)

    def other_mode(self) -> str:
        return next(m for m in RETRAIN_MODES if m != self.retrain.mode)

    def influence_config(self, base_rm: str) -> InfluenceConfig:
        return InfluenceConfig(reward_model=base_rm, data=self.base.data, rows=self.base.train_rows,
                               fraction=self.variants.fraction, max_length=self.variants.max_length, runtime=self.runtime)

    def variants_config(self, strategy: str, base_rm: str, scored: str = "") -> GenerateVariantsConfig:
        return dataclasses.replace(self.variants, reward_model=base_rm, strategy=strategy, scored=scored)

    def robustness_config(self, rm: str) -> RobustnessConfig:
        return dataclasses.replace(self.robustness, reward_model=rm)

    def bon_config(self, base_rm: str, arm_rm: str, samples_dir: str = "") -> BestOfNConfig:
        """Best-of-N of the base (RM A) against an arm (RM B) on the held-out prompts, by the policy that decodes;
        every arm reads the same samples from ``samples_dir`` (drawn once, by the first arm)."""
        return BestOfNConfig(rm_a=base_rm, rm_b=arm_rm, judge_rm=self.bon_judge_rm.strip(), data=self.robustness.data,
                             rows=self.eval_rows, policy=self.variants.policy, prompts=self.bon_prompts, n=self.bon_n,
                             samples_dir=samples_dir, runtime=self.runtime)

    def arms(self) -> list[str]:
        """The arms this config trains after the base, in order (a skipped one, without new pairs, included)."""
        reform = [f"reform_{'unfiltered' if self.filter_inappropriate else 'filtered'}"] * self.ablate_appropriateness
        reform += [f"reform_{self.other_mode()}"] * self.ablate_retrain_mode
        others = [a for s in self.strategies()[1:] for a in (ARMS[s], *[f"{ARMS[s]}_equal"] * self.ablate_equal_count,
                                                             *[f"{ARMS[s]}_ordered"] * self.ablate_ordered)]
        return ["reform", *reform, *others] + ["no_aug"] * self.trains_no_aug()

    def strategies(self) -> list[str]:
        return ["lowest_loss"] + ["random"] * self.ablate_random + ["highest_loss"] * self.ablate_highest_loss

    def trains_no_aug(self) -> bool:
        return self.ablate_no_augment and (self.retrain.mode == "finetune" or self.ablate_retrain_mode)


def _count_lines(path: str) -> int:
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def _sample_lines(path: str, n: int, seed: int, out: Path) -> str:
    """A seeded sample of ``n`` of the pairs in ``path``, in their order, written to ``out`` -> its path. The same
    inputs give the same file, so a rerun's retraining stage sees the config (and the pairs) it ran with."""
    with open(path, encoding="utf-8") as fh:
        lines = [line for line in fh if line.strip()]
    keep = sorted(random.Random(seed).sample(range(len(lines)), n))
    atomic_write_text(out, "".join(lines[i] if lines[i].endswith("\n") else lines[i] + "\n" for i in keep))
    return str(out)


def _ordered_lines(pairs_path: str, variants_path: str, out: Path) -> str:
    """The pairs of ``pairs_path`` whose variant was decoded from a source pair the RM ordered right (its
    r_chosen > r_rejected in ``variants_path``), in their order, written to ``out`` -> its path."""
    from .inversions import Variant, ordered_wrong

    with open(variants_path, encoding="utf-8") as fh:
        variants = [Variant.from_record(json.loads(line)) for line in fh if line.strip()]
    key = lambda trl: json.dumps(trl, sort_keys=True)  # noqa: E731  (the pairs file is TRL rows, without ids)
    right = {key(new.to_trl()) for v in variants if not ordered_wrong(v.direction, v.r_chosen, v.r_rejected)
             for new in [v.new_pair()] if new is not None}
    with open(pairs_path, encoding="utf-8") as fh:
        lines = [line for line in fh if line.strip() and key(json.loads(line)) in right]
    atomic_write_text(out, "".join(line if line.endswith("\n") else line + "\n" for line in lines))
    return str(out)


def _outcome(result: ComparisonResult) -> str:
    reform = next((m for m in result.models if m.name == "reform"), None)
    if reform is None:
        return "no inversions found"
    return f"reform mean drop {reform.mean_drop:+.3f} vs base {result.models[0].mean_drop:+.3f}"


@job("starting", done=_outcome)
def run_pipeline(config: PipelineConfig, run: RunDir) -> ComparisonResult:
    """The REFORM loop end to end; writes ``report.json`` (models, stages, tables) in ``run_dir``."""
    if config.bon_judge_rm and Path(config.bon_judge_rm).expanduser().resolve().is_relative_to(run.path.resolve()):
        raise ValueError(f"bon_judge_rm {config.bon_judge_rm} is a checkpoint of this pipeline run (its base or an arm): it "
                         "would judge its own picks; give a judge RM trained apart")
    if config.runtime.trunk_cache == "auto":  # one cache for every stage: only new texts pay for the frozen layers
        shared = dataclasses.replace(config.runtime, trunk_cache=str(run.path / "trunk_cache"))
        config = dataclasses.replace(config, runtime=shared)
    strategies, arms = config.strategies(), config.arms()
    stages = Stages(run, total=(0 if config.base_rm else 1) + 2 + len(strategies) + 2 * len(arms)
                    + len(arms) * bool(config.bon_judge_rm))
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

    def augment(arm: str, path: str, strategy: str, mode: str = "") -> None:
        n = _count_lines(path)
        if n == 0:
            run.log(f"{arm}: no inversions to add; the retrained model would equal the base — skipped")
            stages.skip(2)
            return
        ckpt = stages(f"retrain_{arm}", train_reward_model, config.retrain_config(base_rm, path, mode),
                      (f"variants_{strategy}",))["checkpoint"]
        evaluate(arm, ckpt, n, f"retrain_{arm}")

    def ordered_arm(arm: str, ordered: str, strategy: str) -> None:
        n = _count_lines(ordered)
        if n == 0:
            run.log(f"{arm}_ordered: none of the arm's pairs comes from a source pair the base orders right — skipped")
            stages.skip(2)
            return
        if 0 < reform_count < n:
            run.log(f"{arm}_ordered: a seeded {reform_count} of the arm's {n} pairs from source pairs the base orders right "
                    "(the reform arm's count)")
            ordered = _sample_lines(ordered, reform_count, config.runtime.seed, run.path / f"{arm}_ordered.pairs.jsonl")
        else:
            run.log(f"{arm}_ordered: all {n} of the arm's pairs, from source pairs the base orders right")
        augment(f"{arm}_ordered", ordered, strategy)

    def pairs_of(out: dict, filtered: bool) -> str:
        return out["appropriate_augment_path"] if filtered else out["augment_path"]

    reform_count = 0
    for strategy in strategies:
        arm = ARMS[strategy]
        out = stages(f"variants_{strategy}", generate_variants,
                     config.variants_config(strategy, base_rm, influence["scored_path"]), ("influence",))
        variants[strategy] = out["stats"]
        pairs = config.approved if arm == "reform" and config.approved else pairs_of(out, config.filter_inappropriate)
        augment(arm, pairs, strategy)
        if arm == "reform":
            reform_count = _count_lines(pairs)
        elif config.ablate_equal_count:  # the same arm at reform's count: pair for pair, not p% for p%
            n = _count_lines(pairs)
            if 0 < reform_count < n:
                run.log(f"{arm}_equal: a seeded {reform_count} of the arm's {n} pairs (the reform arm's count)")
                augment(f"{arm}_equal", _sample_lines(pairs, reform_count, config.runtime.seed,
                                                      run.path / f"{arm}_equal.pairs.jsonl"), strategy)
            else:
                run.log(f"{arm}_equal: the arm has {n} pairs and reform {reform_count}; no smaller sample to take — skipped")
                stages.skip(2)
        if arm != "reform" and config.ablate_ordered:  # only flips of a right ordering, as the reform arm's all are
            ordered_arm(arm, _ordered_lines(pairs, out["variants_path"], run.path / f"{arm}_ordered.all.pairs.jsonl"), strategy)
        if arm == "reform" and config.ablate_appropriateness:
            other = "reform_unfiltered" if config.filter_inappropriate else "reform_filtered"
            augment(other, pairs_of(out, not config.filter_inappropriate), strategy)
        if arm == "reform" and config.ablate_retrain_mode:  # the same pairs, retrained the other way
            augment(f"reform_{config.other_mode()}", pairs, strategy, config.other_mode())
    if config.trains_no_aug():  # the extra fine-tuning epochs alone, as every fine-tuned arm had them
        ckpt = stages("retrain_no_aug", train_reward_model, config.retrain_config(base_rm, "", "finetune"),
                      ("base",))["checkpoint"]
        evaluate("no_aug", ckpt, 0, "retrain_no_aug")
    elif config.ablate_no_augment:
        run.log("no_aug: every arm retrains from scratch with the base's recipe, data and seed, and that recipe without new "
                "pairs is the base itself: the base row is the no-augmentation model (none trained)"
                + ("; this holds when base_rm was trained with config.base's recipe" if config.base_rm else ""))
    if config.bon_judge_rm:  # downstream quality: each arm's best-of-N picks against the base's, judged apart
        trained = {m.name: m.checkpoint for m in models}
        for arm in arms:
            if arm not in trained:
                stages.skip(1)
                continue
            stages(f"bon_{arm}", run_best_of_n, config.bon_config(base_rm, trained[arm], str(run.path / "bon_samples")),
                   ("base", f"retrain_{arm}"),
                   describe=lambda r: f"the arm's picks win {r['win_rate']:.3f} [{r['low']:.3f}, {r['high']:.3f}] of "
                                      f"{r['prompts']} prompts")
    return stages.write_report(models, variants)
