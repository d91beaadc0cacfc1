"""Tiny models for the Adv-RM tests: a policy that answers briefly and ends with EOS (a random tiny
model almost never samples EOS, and the keep filter needs it), and reward models on that policy."""
from pathlib import Path

import torch

from reform_engine.runtime import Runtime
from reform_engine.tiny import save_tiny_model

ASKS = ["Can you help me?", "What time is it?", "Tell me a fact.", "How do I cook rice?", "Where is Paris?", "Name a colour.",
        "What is 2+2?", "Say something nice."]
ANSWERS = ["Sure.", "Yes!", "No, sorry.", "Maybe so.", "OK then.", "Of course!"]


def save_short_answer_policy(directory: str | Path, seed: int = 1, steps: int = 80) -> str:
    """A tiny ASCII policy fine-tuned (seeded, ``steps`` Adam steps) to answer ASKS with one of
    ANSWERS and then EOS; saved as an ordinary model directory -> its path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = save_tiny_model(directory, seed=seed, ascii_only=True)
    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    seqs, starts = [], []
    for ask in ASKS:
        prompt = tok.apply_chat_template([{"role": "user", "content": ask}], tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        for answer in ANSWERS:
            seqs.append(p_ids + tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
            starts.append(len(p_ids))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    for i, (s, start) in enumerate(zip(seqs, starts)):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, start: len(s)] = torch.tensor(s[start:])
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=(labels != -100) | (torch.arange(width)[None] < torch.tensor(starts)[:, None]),
                     labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(directory)
    return str(directory)


def save_attack_models(root: str | Path) -> dict:
    """Everything an attack needs, tiny: the short-answer policy, a target RM (LoRA on the top layer),
    two penalty RMs (LoRA on another seed, head-only) and a judge (full fine-tune), each with random
    weights where training would have put some (so they disagree), and 8 preference pairs."""
    from conftest import make_pair
    from reform_engine.data import write_jsonl
    from reform_engine.reward_model import RewardModelSpec, build_reward_model

    root = Path(root)
    policy = save_short_answer_policy(root / "policy")
    paths = {}
    for name, finetune, seed in (("target", "lora", 3), ("penalty1", "lora", 4), ("penalty2", "head", 5), ("judge", "full", 6)):
        rm = build_reward_model(RewardModelSpec(base_model=policy, finetune=finetune, lora_layers=1, lora_r=2, max_length=128),
                                device="cpu", seed=seed)
        with torch.no_grad():
            for param_name, p in rm.named_parameters():
                if "lora_B" in param_name:
                    p.normal_(0, 0.3)
        paths[name] = str(rm.save(root / name))
    data = root / "pairs.jsonl"
    write_jsonl(data, [make_pair(i, a, "Sure, happy to help.", "No. Go away!!").to_trl() for i, a in enumerate(ASKS)])
    return {"policy": policy, **paths, "penalties": f"{paths['penalty1']},{paths['penalty2']}", "data": str(data)}


def tiny_attack(models: dict, **overrides) -> dict:
    """An AttackConfig's JSON (its groups as dicts) for a few-second attack on the tiny models; a filter
    so loose that every sample ending in EOS passes (the tests are about the plumbing, not the attack's
    strength). ``overrides``: fields, a group's dict merging into the group (``rloo={"steps": 2}``)."""
    from dataclasses import fields

    from reform_engine.attack import AttackConfig

    config = {"target_rm": models["target"], "penalty_rms": models["penalties"], "judge_rm": models["judge"],
              "policy": models["policy"], "data": models["data"], "prompts": 4,
              "reward": {"base_samples": 4, "threshold": -10.0},
              "rloo": {"steps": 4, "group_size": 2, "prompts_per_step": 2, "lr": 1e-2}, "response": {"max_new_tokens": 10},
              "adapter": {"lora_layers": 1, "lora_r": 2, "lora_alpha": 4}, "keep": {"fresh_samples": 2, "u_z_min": -10.0},
              "runtime": Runtime(device="cpu", threads=1)}
    for name, value in overrides.items():
        assert name in {f.name for f in fields(AttackConfig)}, f"{name} is no AttackConfig field: give it in its group"
        config[name] = config[name] | value if isinstance(value, dict) and isinstance(config.get(name), dict) else value
    return config


def tiny_attack_config(models: dict, **overrides):
    """tiny_attack's AttackConfig."""
    from reform_engine.attack import AttackConfig
    from reform_engine.configs import config_from_dict

    return config_from_dict(AttackConfig, tiny_attack(models, **overrides))


def save_compared_runs(root: str | Path) -> dict:
    """A real tiny pipeline (REFORM; its reform arm trained on one curated pair) and a real tiny
    adv-rounds run (one round, every kept sample added) on the pipeline's base RM: the two run
    directories a comparison reads -> {"pipeline", "rounds", "base", "models"}."""
    from reform_engine.adv_rounds import AdvRoundsConfig, run_adv_rounds
    from reform_engine.attack import AttackConfig
    from reform_engine.data import write_jsonl
    from reform_engine.decoding import DecodingConfig
    from reform_engine.inversions import GenerateVariantsConfig
    from reform_engine.pipeline import PipelineConfig, run_pipeline
    from reform_engine.reward_model import RewardModelSpec
    from reform_engine.robustness import RobustnessConfig
    from reform_engine.training import TrainRewardConfig

    root = Path(root)
    models = save_attack_models(root / "models")
    approved = root / "approved.jsonl"
    write_jsonl(approved, [{"prompt": [{"role": "user", "content": "Name a colour."}], "chosen": "Blue.", "rejected": "NO!!!"}])
    robustness = RobustnessConfig(reward_model="", perturbations="capitalization,verbosity")
    pipeline = root / "pipeline"
    run_pipeline(PipelineConfig(base=TrainRewardConfig(data=models["data"], train_rows="0:6", batch_size=4, lr=5e-3, epochs=1,
                                                       model=RewardModelSpec(base_model=models["policy"], lora_layers=1,
                                                                             max_length=128)),
                                eval_rows="6:",
                                variants=GenerateVariantsConfig(reward_model="", policy=models["policy"], fraction=0.5, batch_size=2,
                                                                decoding=DecodingConfig(k=2, max_new_tokens=4)),
                                approved=str(approved), ablate_random=False, robustness=robustness,
                                runtime=Runtime(device="cpu", threads=1)), pipeline)
    base = str(pipeline / "base" / "checkpoint")
    rounds = root / "rounds"
    run_adv_rounds(AdvRoundsConfig(attack=tiny_attack_config(models, target_rm=base), rounds=1, final_attack=False,
                                   confirmed_only=False, robustness=robustness), rounds)
    return {"pipeline": pipeline, "rounds": rounds, "base": base, "models": models}
