"""The REFORM pipeline end to end, with each stage's wall time and the before/after robustness table.

    .venv/bin/python benchmarks/bench_pipeline.py demo          # embedded demo set, every stage from scratch
    .venv/bin/python benchmarks/bench_pipeline.py hh            # shared HH dev file: train 0-1499, evaluate 1500-

The hh preset starts from the RM of bench_train_hh.py (benchmarks/out/train_hh/checkpoint; trained
here first if missing, ~1 h) and fine-tunes it (``--retrain scratch`` for the method's default, about
an hour per arm on 2 cores). Stages already finished in the run directory are reused, so a killed run
continues where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _paths import HH_DEV_PATH  # noqa: E402
from reform_engine.pipeline import PipelineConfig, run_pipeline  # noqa: E402
from reform_engine.runtime import Runtime  # noqa: E402
from reform_engine.stages import RetrainRecipe  # noqa: E402
from reform_engine.training import TrainRewardConfig  # noqa: E402

OUT = ROOT / "benchmarks" / "out"


def preset(name: str, args) -> PipelineConfig:
    if name == "demo":
        return PipelineConfig(runtime=Runtime(threads=args.threads))
    if not HH_DEV_PATH.is_file():
        sys.exit(f"HH dev data not found at {HH_DEV_PATH}; place ../shared beside the repo")
    base = OUT / "train_hh" / "checkpoint"
    return PipelineConfig(base=TrainRewardConfig(data=str(HH_DEV_PATH), train_rows="0:1500", epochs=args.epochs),
                          eval_rows=args.eval_rows, base_rm=str(base.relative_to(ROOT)) if base.is_dir() else "",
                          retrain=RetrainRecipe(mode=args.retrain, replay=args.replay, finetune_epochs=1),
                          runtime=Runtime(threads=args.threads), ablate_no_augment=not args.skip_no_aug)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", choices=["demo", "hh"])
    parser.add_argument("--retrain", default="finetune", choices=["scratch", "finetune"], help="hh only")
    parser.add_argument("--replay", type=int, default=400, help="hh finetune: original pairs replayed beside the new ones")
    parser.add_argument("--eval-rows", default="1500:", help="hh: held-out rows for the robustness evaluation")
    parser.add_argument("--skip-no-aug", action="store_true", help="hh: leave out the no-augmentation fine-tune arm")
    parser.add_argument("--epochs", type=int, default=2, help="hh: epochs of the base RM (and of scratch retraining)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run-dir", default="")
    args = parser.parse_args()
    config = preset(args.preset, args)
    run_dir = Path(args.run_dir) if args.run_dir else OUT / f"pipeline_{args.preset}"
    start = time.perf_counter()
    result = run_pipeline(config, run_dir)
    wall = time.perf_counter() - start

    print(f"\n{args.preset}: {wall / 60:.1f} min wall ({run_dir})")
    print("\n| stage | seconds | reused |\n|---|---|---|")
    for t in result.stages:
        print(f"| {t.name} | {t.seconds:.0f} | {'yes' if t.reused else ''} |")
    print(f"| **total** | **{sum(t.seconds for t in result.stages):.0f}** | |")
    names = list(result.models[0].drops)
    print("\n| model | added pairs | clean acc. | mean drop | " + " | ".join(names) + " |")
    print("|---" * (4 + len(names)) + "|")
    for m in result.models:
        print(f"| {m.name} | {m.augment_pairs} | {m.clean_accuracy:.3f} | {m.mean_drop:+.3f} | "
              + " | ".join(f"{m.drops[n]:+.3f}" for n in names) + " |")
    print("\n" + json.dumps({"summary": result.summary_rows(), "variants": result.variants,
                             "config": dataclasses.asdict(config)}, indent=1))


if __name__ == "__main__":
    main()
