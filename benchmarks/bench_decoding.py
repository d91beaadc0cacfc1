"""Bars: controlled decoding at k=5, 128 new tokens, default models, in tokens/s, side by side in one
process: ours >= 20x the naive reference loop and >= 0.5x plain greedy generation of the policy alone
with its KV cache. Also the peak memory of the decoding process (bar: <= 3 GB).

    .venv/bin/python benchmarks/bench_decoding.py [--rm benchmarks/out/train_hh/checkpoint] [--tokens 128]

The RM is the checkpoint from bench_train_hh.py when present (LoRA on the top 8 layers of SmolLM2, so
the shared path computes the lower 22 layers once); otherwise an untrained RM of the same shape.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the naive loop lives with the tests, which check the engine against it

import torch  # noqa: E402

from _paths import HH_DEV_PATH, bench_data  # noqa: E402
from reform_engine.data import load_preferences, select_rows  # noqa: E402
from reform_engine.decoding import ControlledDecoder, DecodingConfig  # noqa: E402
from reform_engine.models import DEFAULT_MODEL, load_causal_lm, load_tokenizer  # noqa: E402
from reform_engine.reward_model import RewardModelSpec, build_reward_model, load_reward_model  # noqa: E402
from reform_engine.scoring import collate, encode_prompt  # noqa: E402
from reference_decoding import ReferenceDecoder  # noqa: E402


def greedy_tokens_per_s(policy, tok, prompts, n: int) -> float:
    ids, mask = collate([encode_prompt(tok, p, 2048)[0] for p in prompts], tok.pad_token_id, "left")
    start = time.perf_counter()
    out = policy.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          pad_token_id=tok.pad_token_id)
    seconds = time.perf_counter() - start
    assert out.shape[1] - ids.shape[1] == n
    return len(prompts) * n / seconds


def ours_tokens_per_s(decoder, prompts, n: int, k: int, persona: str = "none") -> float:
    start = time.perf_counter()
    res = decoder.decode(prompts, DecodingConfig(k=k, alpha=1.0, max_new_tokens=n, stop_on_eos=False, persona=persona))
    seconds = time.perf_counter() - start
    assert all(len(r.token_ids) == n for r in res)
    return len(prompts) * n / seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rm", default="benchmarks/out/train_hh/checkpoint")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args()
    source = bench_data()
    pairs = select_rows(load_preferences(source, skip_invalid=True).pairs, "1500:" if source == HH_DEV_PATH else "")
    prompts = [p.prompt for p in pairs[: args.batch]]
    policy, tok = load_causal_lm(DEFAULT_MODEL, device="cpu"), load_tokenizer(DEFAULT_MODEL)
    if Path(args.rm).is_dir():
        rm, rm_name = load_reward_model(args.rm, device="cpu"), args.rm
    else:
        tmp = Path("benchmarks/out/untrained_rm")
        build_reward_model(RewardModelSpec(base_model=DEFAULT_MODEL, lora_layers=8, max_length=320), device="cpu").save(tmp)
        rm, rm_name = load_reward_model(str(tmp), device="cpu"), "untrained LoRA-top-8 RM"
    shared = ControlledDecoder(policy, tok, rm)
    fast = ControlledDecoder(policy, tok, rm, path="fast")
    naive = ReferenceDecoder(policy, tok, rm)
    ours_tokens_per_s(shared, prompts[:1], 4, args.k)  # warm-up
    n = args.tokens
    r = {"greedy_b1": greedy_tokens_per_s(policy, tok, prompts[:1], n),
         "shared_b1": ours_tokens_per_s(shared, prompts[:1], n, args.k),
         "fast_b1": ours_tokens_per_s(fast, prompts[:1], n, args.k),
         f"greedy_b{args.batch}": greedy_tokens_per_s(policy, tok, prompts, n),
         f"shared_b{args.batch}": ours_tokens_per_s(shared, prompts, n, args.k)}
    if not args.skip_naive:
        r["naive_b1"] = ours_tokens_per_s(naive, prompts[:1], n, args.k)
    report = {"rm": rm_name, "shared_depth": shared.depth, "layers": len(shared.p_stack.layers), "k": args.k, "tokens": n,
              "threads": torch.get_num_threads(), "data": source.name,
              "tokens_per_s": {key: round(v, 3) for key, v in r.items()},
              "ratios": {"shared_vs_greedy_b1": round(r["shared_b1"] / r["greedy_b1"], 3),
                         f"shared_vs_greedy_b{args.batch}": round(r[f"shared_b{args.batch}"] / r[f"greedy_b{args.batch}"], 3),
                         "fast_vs_greedy_b1": round(r["fast_b1"] / r["greedy_b1"], 3)},
              "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if "naive_b1" in r:
        report["ratios"]["shared_vs_naive_b1"] = round(r["shared_b1"] / r["naive_b1"], 2)
        report["ratios"][f"shared_b{args.batch}_vs_naive"] = round(r[f"shared_b{args.batch}"] / r["naive_b1"], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
