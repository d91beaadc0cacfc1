"""Bar (issue 13): scoring with each prompt computed once is >= 1.45x faster than scoring pairs one at
a time with the same model (the token-count ceiling on HH is ~1.63-1.72x). All modes run side by
side in one process on the same pairs; times are wall and CPU (process) seconds, CPU time being the
steadier figure on a shared machine.

    .venv/bin/python benchmarks/bench_scoring.py [--pairs 293] [--batch-size 16] [--threads 1] [--repeats 3] [--data FILE]

Modes: one-at-a-time (each pair's two sides in one forward, pairs in file order), bucketed (sides
sorted by length into batches, padded to the batch's longest), copied prompt cache (the prompt's KV
cache computed once per pair and copied to both responses: the previous default, still the path for
non-Llama causal RMs), prompt-once rows (the prompt and both responses in one row under a segment
mask, prompt_once.py: the engine's default).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from _paths import bench_data  # noqa: E402
from reform_engine.data import DEMO_PATH, load_preferences, select_rows  # noqa: E402
from reform_engine.models import DEFAULT_MODEL  # noqa: E402
from reform_engine.reward_model import RewardModelSpec, build_reward_model  # noqa: E402
from reform_engine import prompt_once  # noqa: E402
from reform_engine.scoring import encode_pairs, score_pairs  # noqa: E402


def _cat(parts):
    return torch.cat([s.r_chosen for s in parts]), torch.cat([s.r_rejected for s in parts])


def copied_prompt_cache(score):
    """Run ``score`` on the previous shared-prompt path (prompt KV cache copied to each response),
    which the engine keeps for causal RMs that prompt_once does not run."""
    def run():
        packed_applies, prompt_once.applies = prompt_once.applies, lambda rm: False
        try:
            return score()
        finally:
            prompt_once.applies = packed_applies
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=293)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over all modes, interleaved; each mode keeps its fastest")
    ap.add_argument("--data", default=str(bench_data()), help="HH dev file (the demo set when it is missing)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    source = Path(args.data) if Path(args.data).is_file() else DEMO_PATH
    pairs = select_rows(load_preferences(source, skip_invalid=True).pairs, "1500:" if source != DEMO_PATH else "")[: args.pairs]
    rm = build_reward_model(RewardModelSpec(base_model=DEFAULT_MODEL, finetune="head", max_length=args.max_length), device="cpu").eval()
    enc = encode_pairs(rm, pairs)
    tokens = sum(len(e.ids) for p in enc for e in p)
    modes = {  # each returns (r_chosen, r_rejected)
        "one_at_a_time": lambda: _cat([score_pairs(rm, [p], batch_size=2, bucket=False, share_prompt=False) for p in pairs]),
        "bucketed": lambda: _cat([score_pairs(rm, pairs, batch_size=args.batch_size, share_prompt=False)]),
        "bucketed_copied_prompt_cache": copied_prompt_cache(lambda: _cat([score_pairs(rm, pairs, batch_size=args.batch_size)])),
        "prompt_once_rows": lambda: _cat([score_pairs(rm, pairs, batch_size=args.batch_size, share_prompt=True)]),
    }
    score_pairs(rm, pairs[:4])  # warm-up
    results, reference, best = {}, None, {}
    for name in [m for _ in range(args.repeats) for m in modes]:  # interleaved: load changes hit every mode alike
        start, cpu = time.perf_counter(), time.process_time()
        rc, rr = modes[name]()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        if reference is None:
            reference = (rc, rr)
        seconds, cpu = min(seconds, best.get(name, (seconds, cpu))[0]), min(cpu, best.get(name, (seconds, cpu))[1])
        best[name] = (seconds, cpu)
        results[name] = {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "pairs_per_s": round(len(pairs) / seconds, 2),
                         "tokens_per_s": round(tokens / seconds, 1),
                         "max_abs_diff_vs_one_at_a_time": float(max((rc - reference[0]).abs().max(), (rr - reference[1]).abs().max()))}
    base, base_cpu = results["one_at_a_time"]["seconds"], results["one_at_a_time"]["cpu_seconds"]
    for r in results.values():
        r["speedup_vs_one_at_a_time"] = round(base / r["seconds"], 2)
        r["cpu_speedup_vs_one_at_a_time"] = round(base_cpu / r["cpu_seconds"], 2)
    prompt_once_tokens = sum(p[0].response_start + sum(len(e.ids) - e.response_start for e in p) for p in enc)
    print(json.dumps({"data": str(source.name), "pairs": len(pairs), "tokens": tokens, "prompt_once_tokens": prompt_once_tokens,
                      "token_ceiling": round(tokens / prompt_once_tokens, 2), "threads": torch.get_num_threads(),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
