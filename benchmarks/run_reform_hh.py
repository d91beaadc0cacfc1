"""Issue 15: the faithful REFORM loop on HH harmless, as fixed in RESULTS.md before any run.

    .venv/bin/python benchmarks/run_reform_hh.py --dry-run          # print the three jobs' configs, run nothing
    .venv/bin/python benchmarks/run_reform_hh.py                    # base, judge, pipeline; hours on 2 cores
    .venv/bin/python benchmarks/run_reform_hh.py --base-rm RUN/fold-0/checkpoint   # reuse crossval fold 0's model

Three jobs, one after another, each the engine's own job run as its own process (so each resumes where a
killed run stopped: train-rm from its last saved state, the pipeline stage by stage and inside a stage; a
finished job is not run again):

    base      the default recipe on fold!=0/5@0 (2 epochs, seed 0): crossval's fold-0 model, reusable
    judge     the same recipe, seed 1, on a seeded 1,000 of the same rows: appropriateness and best-of-N only
    pipeline  from-scratch arms with the base's recipe: reform (lowest-loss p%, filtered by the judge), its
              unfiltered and fine-tuned twins, random and highest-loss p% (each also at the reform arm's count of
              pairs, a seeded sample: added before it ran); robustness of every arm on the 377
              held-out pairs of fold=0/5@0; best-of-N base vs each arm judged by the judge

At the end the per-arm table (reports.arm_markdown) is printed; paste it into RESULTS.md with the date.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _jobs import plan_arguments, run_plan  # noqa: E402
from reform_engine.appropriateness import AppropriatenessConfig  # noqa: E402
from reform_engine.decoding import DecodingConfig  # noqa: E402
from reform_engine.inversions import GenerateVariantsConfig  # noqa: E402
from reform_engine.pipeline import PipelineConfig  # noqa: E402
from reform_engine.runtime import Runtime  # noqa: E402
from reform_engine.stages import RetrainRecipe  # noqa: E402
from reform_engine.training import TrainRewardConfig  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "reform_hh"


def configs(args) -> list[tuple[str, object, Path, str]]:
    """(job kind, config, run dir, checkpoint it leaves) for every job still to run."""
    runtime = Runtime(device=args.device, threads=args.threads, seed=0, trunk_cache=args.trunk_cache)
    train_rows, held_out = f"fold!={args.fold}/{args.folds}@{args.fold_seed}", f"fold={args.fold}/{args.folds}@{args.fold_seed}"
    recipe = TrainRewardConfig(data=args.data, train_rows=train_rows, epochs=2, runtime=runtime)
    jobs = []
    base_rm = args.base_rm
    if not base_rm:
        jobs.append(("train-rm", recipe, args.out / "base", str(args.out / "base" / "checkpoint")))
        base_rm = jobs[-1][3]
    judge_rm = args.judge_rm
    if not judge_rm:
        judge = dataclasses.replace(recipe, train_sample=1000, runtime=dataclasses.replace(runtime, seed=1))
        jobs.append(("train-rm", judge, args.out / "judge", str(args.out / "judge" / "checkpoint")))
        judge_rm = jobs[-1][3]
    variants = GenerateVariantsConfig(reward_model="", fraction=args.fraction, variants_per_pair=3,
                                      lower_persona="aligned", raise_persona="compliant",
                                      decoding=DecodingConfig(k=5, alpha=1.0, max_new_tokens=64),
                                      appropriateness=AppropriatenessConfig(source="judge", judge_rm=judge_rm))
    pipeline = PipelineConfig(base_rm=base_rm, base=recipe, variants=variants, retrain=RetrainRecipe(mode="scratch"),
                              ablate_random=True, ablate_highest_loss=True, ablate_retrain_mode=True,
                              ablate_equal_count=True,  # added 2026-11-30 18:40 UTC, before it ran (RESULTS.md)
                              ablate_ordered=True,      # added 2026-11-30 20:30 UTC, before it ran (RESULTS.md)
                              filter_inappropriate=True, ablate_appropriateness=True,
                              eval_data=args.data, eval_rows=held_out, bon_judge_rm=judge_rm, bon_prompts=100, bon_n=8,
                              runtime=runtime)
    jobs.append(("pipeline", pipeline, args.out / f"pipeline-p{round(args.fraction * 100)}", ""))
    return jobs


def main() -> None:
    def own(ap) -> None:
        ap.add_argument("--fraction", type=float, default=0.05, help="the influential p (0.05, then 0.10 and 0.20)")
        ap.add_argument("--base-rm", default="", help="a checkpoint of the default recipe on the training rows (crossval fold 0)")
        ap.add_argument("--judge-rm", default="", help="a judge trained apart ('' = train it here)")
    args = plan_arguments(__doc__, OUT, own)
    run_plan([job[:3] for job in configs(args)], args.dry_run)


if __name__ == "__main__":
    main()
