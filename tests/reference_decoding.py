"""The naive controlled-decoding loop: the baseline the engine's paths are checked against (tests) and
timed against (benchmarks/bench_decoding.py). Not part of the engine, which never selects it.

It is what the method's published code does: no caches, one prompt at a time, the policy re-run on the
full prefix every step and one full RM forward per candidate. It shares the engine's proposal, scoring
rule and choice (``ControlledDecoder._propose``, the config's scorer, ``_choose``), so any difference
in tokens comes from the fast paths' caches and masks, which is what the comparison is for.
"""
from __future__ import annotations

from typing import Iterator

import torch

from reform_engine.decoding import CandidateScorer, ControlledDecoder, DecodingConfig, StepEvent


class ReferenceDecoder(ControlledDecoder):
    """``ControlledDecoder`` with the naive loop in place of its paths; ``path`` reads "reference"."""

    def __init__(self, policy, policy_tokenizer, rm):
        super().__init__(policy, policy_tokenizer, rm)
        self.path = "reference"

    @torch.inference_mode()
    def _run(self, prompts, config: DecodingConfig, score: CandidateScorer, generators) -> Iterator[StepEvent]:
        for row, prompt in enumerate(prompts):
            p_ids = self._policy_prompt_ids(prompt, config)
            r_ids = self._rm_prompt_ids(prompt, config)
            done, running, responses = [False], [float("nan")], [[]]
            for step in range(config.max_new_tokens):
                ids = torch.tensor([p_ids + responses[0]], device=self.policy.device)
                logits = self.policy(input_ids=ids).logits[:, -1]
                top_logp, top_ids = self._propose(logits, step, config.k)  # (1, k)
                rewards = torch.tensor([[self._score_one(r_ids + responses[0] + [int(t)]) for t in top_ids[0]]])  # (1, k)
                scores = score(rewards, top_logp.cpu())
                choice = self._choose(scores, config, generators[row:row + 1])
                for event in self._events(step, top_ids, top_logp, rewards, scores, choice, done, running, responses, config):
                    yield StepEvent(row, event.record, event.text, event.done)
                if done[0]:
                    break

    def _score_one(self, ids: list[int]) -> float:
        t = torch.tensor([ids], device=self.rm.device)
        return self.rm.score(t, torch.ones_like(t)).item()
