"""Bar: an RM trained on the first 1,500 pairs of the shared HH dev file reaches >= 62% pairwise
accuracy on the remaining 293, with the length-only baselines beside it; time and pairs/s reported.

    .venv/bin/python benchmarks/bench_train_hh.py [--out benchmarks/out/train_hh] [--epochs 2] [--lora-layers 8]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _paths import HH_DEV_PATH  # noqa: E402
from reform_engine.reward_model import RewardModelSpec  # noqa: E402
from reform_engine.runs import to_jsonable  # noqa: E402
from reform_engine.training import TrainRewardConfig, train_reward_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/out/train_hh")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lora-layers", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--max-length", type=int, default=320)
    args = ap.parse_args()
    if not HH_DEV_PATH.is_file():
        print(f"SKIP: {HH_DEV_PATH} not found (the shared HH dev file is needed for this benchmark)")
        return
    config = TrainRewardConfig(data=str(HH_DEV_PATH), train_rows="0:1500", eval_data=str(HH_DEV_PATH), eval_rows="1500:",
                               epochs=args.epochs, model=RewardModelSpec(lora_layers=args.lora_layers, max_length=args.max_length),
                               lr=args.lr, save_every=188)
    result = train_reward_model(config, args.out)
    summary = {k: v for k, v in to_jsonable(result).items() if k != "loss_curve"}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
