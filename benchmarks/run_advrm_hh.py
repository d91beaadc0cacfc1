"""Issue 14: Adv-RM on HH harmless against the same base RM as the REFORM loop, as fixed in RESULTS.md before any run.

    .venv/bin/python benchmarks/run_advrm_hh.py --dry-run      # print the jobs' command lines, run nothing
    .venv/bin/python benchmarks/run_advrm_hh.py --base-rm CV/fold-0/checkpoint --judge-rm REFORM_HH/judge/checkpoint \\
        --trunk-cache CV/trunk_cache --threads 1               # hours on 2 cores; every job resumes where it stopped

Jobs, one after another, each the engine's own job in its own process:

    penalty-1  the base recipe, seed 2, on a seeded 80% of the base's training rows (LoRA top 8)
    penalty-2  a head-only RM (every layer frozen), seed 3, on another seeded 80%, lr 1e-3 (a linear head needs more
               than LoRA's 2e-4 to move in 2 epochs)
    rounds     adv-rounds: attack the base (target) with the two penalty RMs in the reward, the judge (the REFORM loop's,
               seed 1 on 1,000 rows, never in the reward) confirming; 2 retrainings from scratch with the base's recipe,
               a final attack, and the lambda = 0 arm beside every attack; every RM's robustness on the 377 held-out pairs
               of fold=0/5@0; the attacked prompts are the first 32 of the training rows

A finished job (status succeeded, the same config) is not run again. At the end the rounds table is printed.

--plan 2 (fixed in RESULTS.md after plan 1's round 1 and before any of it ran): plan 1's attack and its lambda = 0
arm left the policy where it started (KL to pi0 0.02-0.03 nats after 100 steps at lr 1e-4, the reward flat), so the
RLOO runs 200 steps at lr 5e-4; one retraining, then the final attack on it (the bar reads round 2 against round 1;
a second retraining feeds none), in rounds-plan2/. The penalty RMs and everything else are plan 1's.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _jobs import plan_arguments, run_plan  # noqa: E402
from reform_engine.adv_rounds import AdvRoundsConfig  # noqa: E402
from reform_engine.attack import AttackConfig  # noqa: E402
from reform_engine.reward_model import RewardModelSpec  # noqa: E402
from reform_engine.runtime import Runtime  # noqa: E402
from reform_engine.training import TrainRewardConfig  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "advrm_hh"
SUBSET = 0.8        # each penalty RM's share of the training rows (a bootstrap-style subset, without replacement)


def configs(args) -> list[tuple[str, object, Path]]:
    """(job kind, config, run dir) of every job, in order."""
    runtime = Runtime(device=args.device, threads=args.threads, seed=0, trunk_cache=args.trunk_cache)
    train_rows, held_out = f"fold!={args.fold}/{args.folds}@{args.fold_seed}", f"fold={args.fold}/{args.folds}@{args.fold_seed}"
    recipe = TrainRewardConfig(data=args.data, train_rows=train_rows, runtime=runtime)
    n_train = len(recipe_rows(recipe))
    penalty1 = dataclasses.replace(recipe, train_sample=round(SUBSET * n_train), runtime=dataclasses.replace(runtime, seed=2))
    penalty2 = dataclasses.replace(recipe, train_sample=round(SUBSET * n_train), lr=1e-3,
                                   model=RewardModelSpec(finetune="head"), runtime=dataclasses.replace(runtime, seed=3))
    jobs = [("train-rm", penalty1, args.out / "penalty-1"), ("train-rm", penalty2, args.out / "penalty-2")]
    attack = AttackConfig(target_rm=args.base_rm, penalty_rms=",".join(str(d / "checkpoint") for _, _, d in jobs),
                          judge_rm=args.judge_rm, data=args.data, rows=train_rows, prompts=32)
    rounds = AdvRoundsConfig(attack=attack, data=args.data, train_rows=train_rows, eval_data=args.data, eval_rows=held_out,
                             rounds=2, final_attack=True, baseline_arm=True, baseline_rounds=1, runtime=runtime)
    if args.plan == 2:
        attack = dataclasses.replace(attack, rloo=dataclasses.replace(attack.rloo, steps=200, lr=5e-4))
        rounds = dataclasses.replace(rounds, attack=attack, rounds=1)
    jobs.append(("adv-rounds", rounds, args.out / ("rounds" if args.plan == 1 else f"rounds-plan{args.plan}")))
    return jobs


def recipe_rows(recipe: TrainRewardConfig) -> list:
    from reform_engine.data import load_preferences, select_rows

    return select_rows(load_preferences(recipe.data, skip_invalid=recipe.skip_invalid).pairs, recipe.train_rows)


def main() -> None:
    def own(ap) -> None:
        ap.add_argument("--base-rm", required=True, help="the REFORM loop's base: crossval fold 0's checkpoint (the target)")
        ap.add_argument("--judge-rm", required=True, help="the REFORM loop's judge (seed 1, 1,000 rows): confirms, never rewards")
        ap.add_argument("--plan", type=int, choices=(1, 2), default=1, help="1: as first fixed; 2: the RLOO at 200 steps and "
                                                                            "lr 5e-4, one retraining (see above)")
    args = plan_arguments(__doc__, OUT, own)
    run_plan(configs(args), args.dry_run)


if __name__ == "__main__":
    main()
