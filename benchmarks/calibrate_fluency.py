"""Where the "not fluent" flag should sit (inversions.VerdictConfig.max_perplexity_ratio): the
perplexity, under the policy, of texts a reader finds fluent and of texts they do not, each divided by
the perplexity of the plain policy's own greedy continuation of the same prompt.

    .venv/bin/python benchmarks/calibrate_fluency.py --data ../shared/data/hh-rlhf-harmless/dev.jsonl.gz [--n 12] [--human-only]

Fluent: the data's human chosen and rejected responses, and controlled decoding at the default k=5,
alpha=1. Not fluent: alpha=0 at k=10 (the reward alone steers; the issue's "H.Pomoderitametakomoronit"
came from this setting). The RM is an untrained head on the policy (the ratio is about the policy's
view of the text; any RM that pushes hard enough makes alpha=0 text drift the same way).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from reform_engine.data import DEMO_PATH, load_preferences  # noqa: E402
from reform_engine.decoding import ControlledDecoder, DecodingConfig  # noqa: E402
from reform_engine.models import DEFAULT_MODEL, load_causal_lm, load_tokenizer  # noqa: E402
from reform_engine.reward_model import RewardModelSpec, build_reward_model  # noqa: E402
from reform_engine.scoring import encode  # noqa: E402


@torch.inference_mode()
def response_perplexity(policy, tok, prompt, response: str) -> float:
    """exp(-mean log pi(response token | prompt, earlier tokens)) of a given response."""
    enc = encode(tok, prompt, response, max_length=1024)
    ids = torch.tensor([enc.ids])
    logp = torch.log_softmax(policy(input_ids=ids).logits[0, :-1].float(), -1)  # (L-1, V)
    target = ids[0, 1:]
    picked = logp[torch.arange(len(target)), target][enc.response_start - 1:]
    return float(torch.exp(-picked.mean()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEMO_PATH))
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--human-only", action="store_true", help="skip controlled decoding: only the data's own responses")
    args = ap.parse_args()
    torch.manual_seed(0)
    pairs = [p for p in load_preferences(args.data, skip_invalid=True).pairs if len(p.prompt_text) < 600][: args.n]
    policy, tok = load_causal_lm(DEFAULT_MODEL, device="cpu"), load_tokenizer(DEFAULT_MODEL)
    rm = build_reward_model(RewardModelSpec(base_model=DEFAULT_MODEL, finetune="head", max_length=1024), device="cpu", seed=0)
    decoder = ControlledDecoder(policy, tok, rm)
    prompts = [p.prompt for p in pairs]
    plain = decoder.plain_perplexities(prompts, args.tokens)
    ratios: dict[str, list[float]] = {
        "human chosen": [response_perplexity(policy, tok, p.prompt, p.chosen) / r for p, r in zip(pairs, plain)],
        "human rejected": [response_perplexity(policy, tok, p.prompt, p.rejected) / r for p, r in zip(pairs, plain)],
    }
    runs = {} if args.human_only else {"k=5 alpha=1 (default)": DecodingConfig(k=5, alpha=1.0, max_new_tokens=args.tokens),
                                       "k=10 alpha=0": DecodingConfig(k=10, alpha=0.0, max_new_tokens=args.tokens)}
    for name, cfg in runs.items():
        res = decoder.decode(prompts, cfg)
        ratios[name] = [x.perplexity / r for x, r in zip(res, plain)]
        print(f"  e.g. {name}: {res[0].text[:100]!r}")
    print(f"plain greedy perplexity: median {statistics.median(plain):.2f}, range {min(plain):.2f}-{max(plain):.2f}")
    for name, xs in ratios.items():
        xs = sorted(xs)
        q = statistics.quantiles(xs, n=20) if len(xs) > 1 else xs * 19
        print(f"{name:24s} ratio to plain: min {xs[0]:6.2f}  median {statistics.median(xs):6.2f}  95th {q[18]:6.2f}  "
              f"max {xs[-1]:6.2f}  (n={len(xs)})")


if __name__ == "__main__":
    main()
