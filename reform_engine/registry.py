"""Every job of ``python -m reform_engine <job>``: its name, config class, function and one line of help.

The command line (``__main__``), the job queue (``jobs.py``) and the app look jobs up here. A job is a
function ``(config, run_dir) -> result`` in the frame of ``runs.job``; its flags are its config's fields.
"""
from __future__ import annotations

from functools import cache
from typing import Any, Callable, NamedTuple


class Job(NamedTuple):
    config: type                            # the job's config dataclass
    run: Callable[[Any, Any], Any]          # (config, run_dir) -> result
    help: str                               # one line for ``python -m reform_engine --help``


@cache
def jobs() -> dict[str, Job]:
    """Job name -> Job. The modules load on first use: a CLI call that runs no job imports none of them."""
    from .adv_rounds import AdvRoundsConfig, run_adv_rounds
    from .attack import AttackConfig, run_attack
    from .best_of_n import BestOfNConfig, run_best_of_n
    from .compare import CompareConfig, run_compare
    from .crossval import CrossValConfig, run_crossval
    from .evaluation import EvaluateRewardConfig, evaluate_reward_model
    from .influence import InfluenceConfig, find_influential
    from .inversions import GenerateVariantsConfig, generate_variants
    from .pipeline import PipelineConfig, run_pipeline
    from .retrain import RetrainConfig, run_retrain
    from .robustness import RobustnessConfig, evaluate_robustness
    from .training import TrainRewardConfig, train_reward_model

    return {
        "train-rm": Job(TrainRewardConfig, train_reward_model, "train a reward model (Bradley-Terry)"),
        "eval-rm": Job(EvaluateRewardConfig, evaluate_reward_model, "pairwise accuracy + length baselines"),
        "crossval": Job(CrossValConfig, run_crossval, "K-fold cross-validation of an RM recipe over random folds, beside "
                        "the length rules and a frozen-feature linear probe"),
        "influential": Job(InfluenceConfig, find_influential, "rank training pairs by loss; select lowest/random/highest p%"),
        "variants": Job(GenerateVariantsConfig, generate_variants,
                        "controlled decoding over the influential set + inversion filter"),
        "robustness": Job(RobustnessConfig, evaluate_robustness, "win-rate drop under perturbations + spurious-feature indicators"),
        "pipeline": Job(PipelineConfig, run_pipeline, "the REFORM loop end to end: base, influential, variants, retrain, robustness"),
        "retrain": Job(RetrainConfig, run_retrain, "retrain on approved pairs (scratch|finetune), then robustness of base vs retrained"),
        "attack": Job(AttackConfig, run_attack, "Adv-RM: an RLOO adversary against a target RM; kept samples become pairs"),
        "adv-rounds": Job(AdvRoundsConfig, run_adv_rounds, "Adv-RM rounds: attack, add the samples as pairs, retrain from "
                          "scratch, attack the retrained RM; robustness of every RM"),
        "compare": Job(CompareConfig, run_compare, "REFORM vs Adv-RM on one base RM: confirmed failures, cost, diversity, "
                       "retrained on equal pairs, cross-attacks, with bootstrap intervals"),
        "best-of-n": Job(BestOfNConfig, run_best_of_n, "best-of-N on held-out prompts picked by RM A vs RM B, judged by a "
                         "third RM: B's win rate with a bootstrap interval"),
    }
