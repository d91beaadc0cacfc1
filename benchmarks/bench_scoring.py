"""Bar: scoring a dataset with length-bucketed dynamic padding is >= 3x faster than scoring pairs one
at a time with the same model. All modes run side by side in one process on the same pairs.

    .venv/bin/python benchmarks/bench_scoring.py [--pairs 293] [--batch-size 16]

Modes: one-at-a-time (each pair's two sides in one forward, pairs in file order), bucketed (sides
sorted by length into batches, padded to the batch's longest), bucketed + shared prompt (the prompt's
KV cache computed once per pair and reused for both responses; the engine's default).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from _paths import HH_DEV_PATH  # noqa: E402
from reform_engine.data import DEMO_PATH, load_preferences, select_rows  # noqa: E402
from reform_engine.models import DEFAULT_MODEL  # noqa: E402
from reform_engine.reward_model import RewardModelSpec, build_reward_model  # noqa: E402
from reform_engine.scoring import encode_pairs, score_pairs  # noqa: E402


def _cat(parts):
    return torch.cat([s.r_chosen for s in parts]), torch.cat([s.r_rejected for s in parts])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=293)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=1024)
    args = ap.parse_args()
    source = HH_DEV_PATH if HH_DEV_PATH.is_file() else DEMO_PATH
    pairs = select_rows(load_preferences(source, skip_invalid=True).pairs, "1500:" if source == HH_DEV_PATH else "")[: args.pairs]
    rm = build_reward_model(RewardModelSpec(base_model=DEFAULT_MODEL, finetune="head", max_length=args.max_length), device="cpu").eval()
    enc = encode_pairs(rm, pairs)
    tokens = sum(len(e.ids) for p in enc for e in p)
    modes = {  # each returns (r_chosen, r_rejected)
        "one_at_a_time": lambda: _cat([score_pairs(rm, [p], batch_size=2, bucket=False, share_prompt=False) for p in pairs]),
        "bucketed": lambda: _cat([score_pairs(rm, pairs, batch_size=args.batch_size, share_prompt=False)]),
        "bucketed_shared_prompt": lambda: _cat([score_pairs(rm, pairs, batch_size=args.batch_size, share_prompt=True)]),
    }
    score_pairs(rm, pairs[:4])  # warm-up
    results, reference = {}, None
    for name in modes:
        start = time.perf_counter()
        rc, rr = modes[name]()
        seconds = time.perf_counter() - start
        if reference is None:
            reference = (rc, rr)
        results[name] = {"seconds": round(seconds, 2), "pairs_per_s": round(len(pairs) / seconds, 2),
                         "tokens_per_s": round(tokens / seconds, 1),
                         "max_abs_diff_vs_one_at_a_time": float(max((rc - reference[0]).abs().max(), (rr - reference[1]).abs().max()))}
    base = results["one_at_a_time"]["seconds"]
    for r in results.values():
        r["speedup_vs_one_at_a_time"] = round(base / r["seconds"], 2)
    print(json.dumps({"data": str(source.name), "pairs": len(pairs), "tokens": tokens, "threads": torch.get_num_threads(),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
