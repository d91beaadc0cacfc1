"""What a policy persona costs the shared decoding path. Without a persona the policy and an RM with
LoRA on its top layers read the same tokens, so the shared path computes the lower layers once for
both; a persona is a system message only the policy reads, so the two prompts differ and the path runs
each model's full stack (decoding.py). This times both on the same prompts, interleaved, and reports
tokens/s and their ratio. No bar: a figure for benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_persona.py [--rm benchmarks/out/train_hh/checkpoint] [--tokens 32] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from _paths import HH_DEV_PATH, bench_data  # noqa: E402
from bench_decoding import ours_tokens_per_s  # noqa: E402
from reform_engine.data import load_preferences, select_rows  # noqa: E402
from reform_engine.decoding import ControlledDecoder  # noqa: E402
from reform_engine.models import DEFAULT_MODEL, load_causal_lm, load_tokenizer  # noqa: E402
from reform_engine.reward_model import RewardModelSpec, build_reward_model, load_reward_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rm", default="benchmarks/out/train_hh/checkpoint")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    source = bench_data()
    pairs = select_rows(load_preferences(source, skip_invalid=True).pairs, "1500:" if source == HH_DEV_PATH else "")
    prompts = [p.prompt for p in pairs[: args.batch]]
    policy, tok = load_causal_lm(DEFAULT_MODEL, device="cpu"), load_tokenizer(DEFAULT_MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        if Path(args.rm).is_dir():
            rm, rm_name = load_reward_model(args.rm, device="cpu"), args.rm
        else:
            build_reward_model(RewardModelSpec(base_model=DEFAULT_MODEL, lora_layers=8, max_length=320), device="cpu").save(tmp)
            rm, rm_name = load_reward_model(tmp, device="cpu"), "untrained LoRA-top-8 RM"
        decoder = ControlledDecoder(policy, tok, rm)
        ours_tokens_per_s(decoder, prompts[:1], 4, args.k, "aligned")  # warm-up
        rates = {"none": [], "aligned": []}
        for _ in range(args.repeats):  # interleaved, so a load change on the machine hits both alike
            for persona in rates:
                rates[persona].append(ours_tokens_per_s(decoder, prompts, args.tokens, args.k, persona))
    best = {p: max(r) for p, r in rates.items()}
    print(f"RM: {rm_name}; path {decoder.path}, {decoder.depth} of {len(decoder.p_stack.layers)} layers shared without a "
          f"persona; batch {args.batch}, k={args.k}, {args.tokens} tokens, {args.threads} thread(s), best of {args.repeats}")
    for p, r in rates.items():
        print(f"  persona {p:8s} {best[p]:6.1f} tokens/s  (runs: {', '.join(f'{x:.1f}' for x in r)})")
    print(f"  aligned / none = {best['aligned'] / best['none']:.2f}x")


if __name__ == "__main__":
    main()
