"""Bar (issue 14): one RLOO step of the Adv-RM attack (8 rollouts x 48 tokens, the target and both
penalty RMs scored, pi0's log-probabilities, one update) takes <= 2.0x the time of just generating the
same rollouts with ``generate``, side by side in one process. Also the peak memory (bar: <= 4 GB).

    .venv/bin/python benchmarks/bench_rloo_step.py [--threads 1] [--repeats 3] [--data dev.jsonl.gz]

Policy: SmolLM2-135M with LoRA on its top 4 layers. RMs: three built from the same model with LoRA on
the top 8 layers (the train-rm default), their LoRA weights drawn at random as training would move
them, saved and loaded as checkpoints are (LoRA merged), so they share the lower 22 layers with the
policy. Both arms sample exactly 48 tokens (EOS masked: ``min_new_tokens``), at temperature 1, from
the same 2 prompts x 4 (rows 0-1 of --data: the shared HH dev file when it is beside the repo, else the demo set). Runs
alternate, after one warm-up of each; the medians are reported.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from _paths import bench_data  # noqa: E402
from reform_engine.adversary import AdversarialRewardConfig, PromptNorm, kl_k3, rloo_advantages, rloo_loss  # noqa: E402
from reform_engine.data import load_preferences, select_rows  # noqa: E402
from reform_engine.models import DEFAULT_MODEL  # noqa: E402
from reform_engine.reward_model import RewardModelSpec, build_reward_model, load_reward_model  # noqa: E402
from reform_engine.rollouts import AdapterConfig, RolloutEngine, build_policy  # noqa: E402
from reform_engine.runtime import set_cpu_threads  # noqa: E402
from reform_engine.scoring import collate  # noqa: E402


def rm_checkpoints(directory: Path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        rm = build_reward_model(RewardModelSpec(base_model=DEFAULT_MODEL, finetune="lora", lora_layers=8), device="cpu", seed=i)
        with torch.no_grad():
            for name, p in rm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.01)
        paths.append(str(rm.save(directory / f"rm{i}")))
    return paths


def rloo_step(engine, optimizer, params, prompts, k, tokens, generator, norm, reward) -> dict:
    """One step as attack.run_attack takes it -> seconds per phase."""
    t = [time.perf_counter()]
    roll = engine.sample(prompts, k, generator, max_new_tokens=tokens, min_new_tokens=tokens)
    t.append(time.perf_counter())
    raw = engine.rm_rewards(roll)
    logp0, _ = engine.logprobs(roll, adapter=False)
    t.append(time.perf_counter())
    logp, _ = engine.logprobs(roll, grad=True)
    idx = roll.owner.cpu()
    z = norm.z(raw, idx)
    parts = reward(z[:, 0], z[:, 1:], roll.ended, kl_k3(logp.detach(), logp0, roll.mask))
    loss = rloo_loss(rloo_advantages(parts.total.view(len(prompts), k)).view(-1), logp.sum(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    t.append(time.perf_counter())
    assert roll.tokens.shape == (len(prompts) * k, tokens)
    return {"sample": t[1] - t[0], "score": t[2] - t[1], "update": t[3] - t[2], "step": t[3] - t[0]}


def generate_seconds(policy, tok, engine, prompts, k, tokens) -> float:
    ids, mask = collate([engine.prompt_ids(p) for p in prompts for _ in range(k)], tok.pad_token_id, "left")
    start = time.perf_counter()
    with torch.no_grad():
        out = policy.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=tok.pad_token_id)
    seconds = time.perf_counter() - start
    assert out.shape == (len(prompts) * k, ids.shape[1] + tokens)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--data", default=str(bench_data()))
    args = ap.parse_args()
    set_cpu_threads(args.threads)
    source = args.data
    pairs = select_rows(load_preferences(source, skip_invalid=True).pairs, f"0:{args.prompts}")
    prompts = [p.prompt for p in pairs]
    with tempfile.TemporaryDirectory() as tmp:
        rms = [load_reward_model(p, device="cpu") for p in rm_checkpoints(Path(tmp), 3)]
    policy, tok = build_policy(DEFAULT_MODEL, **asdict(AdapterConfig()), device="cpu")  # the attack's adapter
    with torch.no_grad():  # a policy some steps into training: its adapter changes the top layers
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    engine = RolloutEngine(policy, tok, rms, prompt_budget=256 - args.tokens)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    n = len(prompts)
    norm = PromptNorm(torch.zeros(n, 3), torch.ones(n, 3), torch.zeros(n), torch.ones(n))
    reward = AdversarialRewardConfig().build()  # the attack's default reward

    ours, theirs = [], []
    for r in range(args.repeats + 1):  # the first of each is a warm-up
        ours.append(rloo_step(engine, optimizer, params, prompts, args.k, args.tokens, generator, norm, reward))
        theirs.append(generate_seconds(policy, tok, engine, prompts, args.k, args.tokens))
    ours, theirs = ours[1:], theirs[1:]
    med = {key: statistics.median(o[key] for o in ours) for key in ours[0]}
    gen = statistics.median(theirs)
    result = {"source": str(source), "threads": torch.get_num_threads(), "rollouts": n * args.k, "tokens": args.tokens,
              "prompt_tokens": [len(engine.prompt_ids(p)) for p in prompts], "rm_layers_from": engine.rm_depths,
              "policy_lora_from": engine.lora_start, "generate_s": round(gen, 3),
              **{f"rloo_{k}_s": round(v, 3) for k, v in med.items()}, "ratio_step_over_generate": round(med["step"] / gen, 3),
              "ratio_sample_over_generate": round(med["sample"] / gen, 3),
              "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
