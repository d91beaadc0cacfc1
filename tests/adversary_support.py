"""Tiny models for the Adv-RM tests: a policy that answers briefly and ends with EOS (a random tiny
model almost never samples EOS, and the keep filter needs it), and reward models on that policy."""
from pathlib import Path

import torch

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
