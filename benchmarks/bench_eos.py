"""How often does a rollout of pi0 finish within the attack's token budget? (issue 14: the EOS problem)

    .venv/bin/python benchmarks/bench_eos.py [--threads 1] [--prompts 12] [--k 4] [--data dev.jsonl.gz]

A rollout that does not finish earns -C, so when almost none finish the RLOO advantages carry no
signal. SmolLM2-135M-Instruct (LoRA adapter off: pi0) samples k responses per prompt at temperature 1
with EOS as the only stop, up to the longest budget; the completion rates of the shorter budgets and
of the sentence window (attack's response.sentence_window: a sentence end in the last W tokens of the budget
ends the response) are read off the same samples, since both stopping rules only look back: a
rollout stopped earlier is a prefix of the one sampled here. Prompts: the first rows of --data (the
shared HH dev file when it is beside the repo, else the demo set), cut to the attack's prompt budget.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from _paths import bench_data  # noqa: E402
from reform_engine.data import load_preferences, select_rows  # noqa: E402
from reform_engine.models import DEFAULT_MODEL  # noqa: E402
from reform_engine.rollouts import AdapterConfig, RolloutEngine, build_policy  # noqa: E402
from reform_engine.runtime import set_cpu_threads  # noqa: E402


def complete_within(roll, sentence: torch.Tensor, digit: torch.Tensor, budget: int, window: int) -> torch.Tensor:
    """(N,) bool: the rollout would have finished within ``budget`` tokens: EOS, or a sentence end
    (not after a digit) in the last ``window`` of them, before any EOS."""
    n_tokens = roll.tokens.shape[1]
    eos_at = torch.where(roll.ended, roll.lengths - 1, torch.full_like(roll.lengths, 10**9))  # (N,)
    done = eos_at < budget
    if window:
        t = torch.arange(n_tokens)[None]                                                  # (1, T)
        previous = torch.cat([torch.full_like(roll.tokens[:, :1], -1), roll.tokens[:, :-1]], 1)
        ends = torch.isin(roll.tokens, sentence) & ~torch.isin(previous, digit)
        ends &= (t >= budget - window) & (t < budget) & (t < eos_at[:, None])
        done |= ends.any(1)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--prompt-tokens", type=int, default=208, help="the attack's budget: 256 - 48")
    parser.add_argument("--data", default=str(bench_data()))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    set_cpu_threads(args.threads)
    pairs = select_rows(load_preferences(args.data, skip_invalid=True).pairs, f":{args.prompts}")
    policy, tok = build_policy(DEFAULT_MODEL, **asdict(AdapterConfig()), device="cpu")  # the attack's adapter
    engine = RolloutEngine(policy, tok, [], prompt_budget=args.prompt_tokens)
    sentence, digit = engine.sentence_ids()
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    rows = {}
    for lo in range(0, len(pairs), 4):
        roll = engine.sample([p.prompt for p in pairs[lo:lo + 4]], args.k, generator, max_new_tokens=args.max_new_tokens,
                             adapter=False)
        for budget in (48, 64, 96):
            if budget > args.max_new_tokens:
                continue
            for window in (0, 8, 16, 24):
                got = complete_within(roll, sentence, digit, budget, window)
                rows.setdefault((budget, window), []).extend(got.tolist())
    seconds = time.perf_counter() - start
    n = len(pairs) * args.k
    print(json.dumps({"data": Path(args.data).name, "prompts": len(pairs), "k": args.k, "rollouts": n, "seconds": round(seconds, 1),
                      "complete_rate": {f"{b} tokens, window {w}": round(sum(v) / len(v), 3) for (b, w), v in sorted(rows.items())}},
                     indent=2))


if __name__ == "__main__":
    main()
