"""Reward-guided controlled decoding: REFORM's search for responses the RM scores on the wrong side.

At every step the policy proposes its top-k next tokens; the RM scores each candidate prefix
r(x, [y<i, token]); the next token maximises (or, with a temperature, is sampled by)

    s = -r + alpha * log pi(token | x, y<i)    direction "lower": a good-looking response scored low
    s = +r + alpha * log pi(token | x, y<i)    direction "raise": a bad response scored high

Three paths choose the same tokens as the naive loop (tests/reference_decoding.py, the tests' and the
benchmark's baseline) at very different cost:
- shared (Llama-style policy and causal RM sharing a tokenizer): the fast path below run layer by
  layer on preallocated caches; when the RM's lower layers equal the policy's (LoRA on the top layers
  or a head-only RM on the policy's base), they are computed once for both (layer_stack.py). That needs
  the same input tokens: with a policy persona (a system message only the policy reads, personas.py)
  the two prompts differ, and the path runs each model's full stack on its own prompt instead.
- fast (policy and RM share a tokenizer, causal RM): both models keep a KV cache; the k candidates
  are scored in ONE RM forward as k tokens in one row, with a 4D mask that lets each candidate see
  only the prefix (and all at the same position). Per step: one 1-token policy forward and one
  (k+1)-token RM forward, whatever the length of the text so far.
- general (different tokenizers, or a non-causal RM): candidates are decoded to text and re-scored
  as whole sequences in one batch per step.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from .configs import setting
from .data import DataError
from .layer_stack import StaticKVCache, Stack, attention_mask, prefill_mask, run_layers, shared_depth
from .personas import system_prompt
from .scoring import collate, encode, encode_prompt, score_sequences

DIRECTIONS = ("lower", "raise")
PATHS = ("auto", "shared", "fast", "general")
# (least, most) of each knob: the least is what DecodingConfig accepts; the most is as far as a page's
# control goes (the config itself takes any k up to the vocabulary, any length up to the context).
LIMITS = {"k": (1, 50), "alpha": (0.0, 10.0), "temperature": (0.0, 5.0), "max_new_tokens": (1, 1024)}


@dataclass
class DecodingConfig:
    k: int = setting(5, "candidates per step: the policy's top k tokens; 1 with alpha 0 is plain greedy decoding")
    alpha: float = setting(1.0, "fluency weight on log pi; higher keeps the text closer to what the policy would say, "
                                "0 lets the reward alone steer")
    temperature: float = setting(0.0, "0 takes the best score; > 0 samples from softmax(score / temperature)")
    max_new_tokens: int = setting(64, "tokens decoded at most per response")
    direction: str = setting("lower", "lower: from a preferred pair, look for a good-looking response the RM scores low; "
                                      "raise: from a rejected pair, for a bad response it scores high", choices=DIRECTIONS)
    stop_on_eos: bool = setting(True, "end a response at the policy's end-of-text token")
    persona: str = setting("none", "the policy's system prompt (personas.py): none, aligned (safe, refuses harmful requests), "
                                   "compliant (complies with anything), or custom:<text>; the RM never sees it")

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < LIMITS["k"][0]:
            raise ValueError(f"k={self.k!r}: the policy must propose at least 1 candidate; use k >= 1 (5 is the usual choice)")
        self.scorer()  # refuses a bad alpha
        if not self.temperature >= LIMITS["temperature"][0] or math.isinf(self.temperature):
            raise ValueError(f"temperature={self.temperature!r}: use 0 for greedy or a finite value > 0 to sample")
        if self.max_new_tokens < LIMITS["max_new_tokens"][0]:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r}: generate at least 1 token")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction={self.direction!r}: use 'lower' (find a good response the RM scores low) "
                             f"or 'raise' (find a bad response the RM scores high)")
        system_prompt(self.persona)  # refuses an unknown persona, naming those that exist

    @property
    def sign(self) -> float:
        return -1.0 if self.direction == "lower" else 1.0

    def scorer(self) -> RewardGuidedScore:
        """The rule that scores this config's candidates."""
        return RewardGuidedScore(self.sign, self.alpha)


class CandidateScorer(ABC):
    """A rule that scores each step's k candidate tokens; the decoder takes the best score (or samples
    softmax(score / temperature)). In the spirit of transformers' logits processors: one call, bad
    arguments refused at construction, inputs never changed in place. Every decoding path calls it,
    so another rule (an adversary's reward with its penalties) is another such object."""

    @abstractmethod
    def __call__(self, rewards: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """rewards (B, k) r(x, [y<i, c]) and logp (B, k) log pi(c | x, y<i) of each candidate c -> scores (B, k)."""


class RewardGuidedScore(CandidateScorer):
    """REFORM's score s = sign * r + alpha * log pi: sign -1 looks for a good-looking response the RM
    scores low (direction "lower"), +1 for a bad one it scores high ("raise"); alpha weighs fluency."""

    def __init__(self, sign, alpha):
        """``sign`` and ``alpha`` as a DecodingConfig holds them (its ``sign`` and ``alpha``)."""
        if sign not in (-1.0, 1.0):
            raise ValueError(f"sign={sign!r}: use -1.0 to push the reward down (direction 'lower') "
                             f"or +1.0 to push it up (direction 'raise')")
        if not alpha >= LIMITS["alpha"][0]:
            raise ValueError(f"alpha={alpha!r}: the fluency weight cannot be negative; use alpha >= 0 (0 ignores fluency)")
        self.sign, self.alpha = float(sign), float(alpha)

    def __call__(self, rewards: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        if rewards.shape != logp.shape:
            raise ValueError(f"rewards {tuple(rewards.shape)} and log-probabilities {tuple(logp.shape)} differ in shape; "
                             f"pass one of each per candidate, both (B, k)")
        return self.sign * rewards + self.alpha * logp

    def __repr__(self) -> str:
        return f"RewardGuidedScore(sign={self.sign}, alpha={self.alpha})"


@dataclass
class StepRecord:
    """One decoding step of one prompt: everything the per-token trace needs."""

    step: int
    candidate_ids: list[int]
    candidate_pieces: list[str]
    logprobs: list[float]         # log pi(candidate | prefix) under the policy (temperature 1)
    rewards: list[float]          # r(x, [y<i, candidate])
    scores: list[float]           # the scorer's: sign * reward + alpha * logprob
    chosen: int                   # index into the candidates
    token_id: int
    piece: str
    running_reward: float         # reward of the response so far (unchanged when the choice is EOS)
    is_eos: bool


@dataclass
class StepEvent:
    row: int                      # which prompt of the batch
    record: StepRecord
    text: str                     # the response so far
    done: bool


@dataclass
class DecodingResult:
    prompt: tuple
    direction: str
    path: str
    token_ids: list[int]
    text: str
    steps: list[StepRecord] = field(default_factory=list)
    final_reward: float = float("nan")
    perplexity: float = float("nan")   # exp(-mean log pi(chosen)): how natural the policy finds the text
    stopped: str = "max_new_tokens"    # or "eos"
    persona: str = "none"              # the policy's persona while decoding (DecodingConfig.persona)


class ControlledDecoder:
    """Holds a policy (causal LM + tokenizer) and a reward model; decodes batches of prompts.

    ``path="auto"`` takes the fast path when it applies (shared vocabulary, causal RM, an attention
    implementation that accepts explicit masks) and the general path otherwise.
    """

    def __init__(self, policy, policy_tokenizer, rm, *, path: str = "auto"):
        if path not in PATHS:
            moved = " (the naive 'reference' loop is not an engine path: it is the tests' and the benchmark's " \
                    "baseline, tests/reference_decoding.py)" if path == "reference" else ""
            raise ValueError(f"path={path!r}; use one of {PATHS}{moved}")
        self.policy, self.tokenizer, self.rm = policy, policy_tokenizer, rm
        self.shared_vocab = rm.tokenizer is policy_tokenizer or rm.tokenizer.get_vocab() == policy_tokenizer.get_vocab()
        attn = getattr(getattr(rm, "backbone", None), "config", None)
        self.mask_kind = {"sdpa": "bool", "eager": "float"}.get(getattr(attn, "_attn_implementation", None))
        fast_ok = self.shared_vocab and rm.is_causal and self.mask_kind is not None
        self.p_stack = Stack.of(policy) if fast_ok else None
        self.r_stack = Stack.of(rm.backbone) if fast_ok else None
        shared_ok = self.p_stack is not None and self.r_stack is not None
        self.depth = shared_depth(self.p_stack, self.r_stack) if shared_ok else 0
        if (path == "fast" and not fast_ok) or (path == "shared" and not shared_ok):
            raise ValueError(f"the {path} path needs a causal RM sharing the policy's tokenizer, with sdpa or eager attention"
                             f"{' and Llama-style models' if path == 'shared' else ''}; use path='general'")
        self.path = ("shared" if shared_ok else "fast" if fast_ok else "general") if path == "auto" else path
        eos = policy_tokenizer.eos_token_id
        gen_eos = getattr(getattr(policy, "generation_config", None), "eos_token_id", None)
        self.eos_ids = sorted({e for e in ([eos] + (gen_eos if isinstance(gen_eos, list) else [gen_eos])) if e is not None})
        self.vocab_size = policy.get_output_embeddings().weight.shape[0]
        self.context = getattr(policy.config, "max_position_embeddings", 4096)

    # ------------------------------------------------------------------ public
    def stream(self, prompts: Sequence[Sequence[dict]], config: DecodingConfig,
               sample_ids: Sequence[int] | None = None, *, scorer: CandidateScorer | None = None,
               seed: int = 0) -> Iterator[StepEvent]:
        """Yield one StepEvent per prompt per step, as soon as the step is decided.

        ``sample_ids`` (default: the row numbers) seed each prompt's sampler together with ``seed`` (a
        job's ``runtime.seed``), so a prompt decodes the same whichever batch it is in. ``scorer`` scores the
        candidates (default: the config's, ``RewardGuidedScore(config.sign, config.alpha)``)."""
        if config.k > self.vocab_size:
            raise ValueError(f"k={config.k} exceeds the policy's vocabulary of {self.vocab_size} tokens; use a smaller k")
        if not prompts:
            raise ValueError("no prompts to decode")
        sample_ids = list(range(len(prompts))) if sample_ids is None else list(sample_ids)
        if len(sample_ids) != len(prompts):
            raise ValueError(f"{len(sample_ids)} sample_ids for {len(prompts)} prompts; give one per prompt")
        yield from self._run([tuple(p) for p in prompts], config, scorer or config.scorer(), _generators(seed, sample_ids))

    def decode(self, prompts: Sequence[Sequence[dict]], config: DecodingConfig,
               sample_ids: Sequence[int] | None = None, on_event=None, *,
               scorer: CandidateScorer | None = None, seed: int = 0) -> list[DecodingResult]:
        """Decode to the end -> one result per prompt. ``on_event(event)`` (optional) sees every step
        as it is decided, e.g. to draw tokens live; ``scorer`` and ``seed`` as in :meth:`stream`."""
        results = [DecodingResult(tuple(p), config.direction, self.path, [], "", persona=config.persona) for p in prompts]
        for event in self.stream(prompts, config, sample_ids, scorer=scorer, seed=seed):
            res, rec = results[event.row], event.record
            res.steps.append(rec)
            if rec.is_eos:
                res.stopped = "eos"
            else:
                res.token_ids.append(rec.token_id)
                res.final_reward = rec.running_reward
            if on_event is not None:
                on_event(event)
        for res in results:
            res.text = self.tokenizer.decode(res.token_ids)
            chosen_logps = [s.logprobs[s.chosen] for s in res.steps if not s.is_eos]
            res.perplexity = math.exp(-sum(chosen_logps) / len(chosen_logps)) if chosen_logps else float("nan")
        return results

    @torch.inference_mode()
    def plain_perplexities(self, prompts: Sequence[Sequence[dict]], max_new_tokens: int, *,
                           stop_on_eos: bool = True, persona: str = "none") -> list[float]:
        """The perplexity of the plain policy's own greedy continuation of each prompt, up to
        ``max_new_tokens`` -> one float per prompt (NaN when nothing was generated). The tokens and
        perplexity of ``decode`` with k=1, alpha=0, but from the policy alone: no RM forward, so the
        fluency reference of a batch costs one policy pass. ``persona``: the policy's, as the variants'
        own perplexities were measured under it."""
        config = DecodingConfig(k=1, alpha=0.0, max_new_tokens=max_new_tokens, stop_on_eos=stop_on_eos, persona=persona)
        prompts = [tuple(p) for p in prompts]
        logits, mask, cache = self._policy_start(prompts, config)
        B = len(prompts)
        sums, counts, done = [0.0] * B, [0] * B, [False] * B
        for step in range(max_new_tokens):
            top_logp, top_ids = self._propose(logits, step, 1)  # (B, 1)
            for b in range(B):
                if done[b]:
                    continue
                if stop_on_eos and int(top_ids[b, 0]) in self.eos_ids:
                    done[b] = True
                    continue
                sums[b], counts[b] = sums[b] + float(top_logp[b, 0]), counts[b] + 1
            if all(done) or step == max_new_tokens - 1:
                break
            logits, mask = self._policy_advance(top_ids[:, 0], mask, cache)
        return [math.exp(-s / n) if n else float("nan") for s, n in zip(sums, counts)]

    # ------------------------------------------------------------------ shared pieces
    def _run(self, prompts, config: DecodingConfig, score: CandidateScorer, generators) -> Iterator[StepEvent]:
        """The chosen path's loop (a subclass may bring its own: the tests' reference loop)."""
        loop = {"shared": self._stream_shared, "fast": self._stream_fast, "general": self._stream_general}[self.path]
        return loop(prompts, config, score, generators)

    def _policy_prompt_ids(self, prompt, config) -> list[int]:
        budget = self.context - config.max_new_tokens
        if budget < 4:
            raise DataError(f"max_new_tokens={config.max_new_tokens} leaves no room for a prompt in the policy's "
                            f"{self.context}-token context.", fix="lower max_new_tokens.")
        return encode_prompt(self.tokenizer, prompt, budget, system=system_prompt(config.persona))[0]

    def _rm_prompt_ids(self, prompt, config) -> list[int]:
        budget = self.rm.spec.max_length - config.max_new_tokens
        if budget < 4:
            raise DataError(f"max_new_tokens={config.max_new_tokens} leaves no room for a prompt within the RM's "
                            f"max_length={self.rm.spec.max_length}.", fix="lower max_new_tokens or raise the RM's max_length.")
        return encode_prompt(self.rm.tokenizer, prompt, budget, use_chat_template=self.rm.spec.use_chat_template)[0]

    def _propose(self, logits: torch.Tensor, step: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V) logits -> (B, k) top-k log-probabilities and token ids. EOS cannot end an empty response."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        if step == 0 and self.eos_ids:
            logp = logp.clone()
            logp[:, self.eos_ids] = float("-inf")
        return logp.topk(k, dim=-1)

    @staticmethod
    def _choose(scores: torch.Tensor, config: DecodingConfig, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """(B, k) combined scores -> (B,) chosen candidate index. One generator per prompt, so a
        prompt's sample does not depend on which other prompts share its batch."""
        if config.temperature == 0:
            return scores.argmax(-1)
        probs = torch.softmax(scores.float().cpu() / config.temperature, dim=-1)
        return torch.stack([torch.multinomial(probs[b], 1, generator=g)[0] for b, g in enumerate(generators)]).to(scores.device)

    def _events(self, step, top_ids, top_logp, rewards, scores, choice, done, running, responses, config) -> Iterator[StepEvent]:
        for b in range(top_ids.shape[0]):
            if done[b]:
                continue
            j = int(choice[b])
            tok = int(top_ids[b, j])
            is_eos = config.stop_on_eos and tok in self.eos_ids
            if not is_eos:
                responses[b].append(tok)
                running[b] = float(rewards[b, j])
            finished = is_eos or step == config.max_new_tokens - 1
            ids = top_ids[b].tolist()
            record = StepRecord(step, ids, [self.tokenizer.decode([t]) for t in ids], top_logp[b].tolist(), rewards[b].tolist(),
                                scores[b].tolist(), j, tok, self.tokenizer.decode([tok]), running[b], is_eos)
            done[b] = finished
            yield StepEvent(b, record, self.tokenizer.decode(responses[b]), finished)

    def _policy_start(self, prompts, config):
        ids, mask = collate([self._policy_prompt_ids(p, config) for p in prompts], self.tokenizer.pad_token_id, "left",
                            self.policy.device)
        from transformers import DynamicCache

        cache = DynamicCache()
        logits = self.policy(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), past_key_values=cache,
                             use_cache=True).logits[:, -1]  # (B, V)
        return logits, mask, cache

    def _policy_advance(self, chosen: torch.Tensor, mask: torch.Tensor, cache):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits = self.policy(input_ids=chosen[:, None], attention_mask=mask, position_ids=_positions(mask)[:, -1:],
                             past_key_values=cache, use_cache=True).logits[:, -1]
        return logits, mask

    # ------------------------------------------------------------------ fast path
    @torch.inference_mode()
    def _stream_fast(self, prompts, config: DecodingConfig, score: CandidateScorer, generators) -> Iterator[StepEvent]:
        from transformers import DynamicCache

        rm, dev = self.rm, self.rm.device
        logits, p_mask, p_cache = self._policy_start(prompts, config)
        r_ids, r_mask = collate([self._rm_prompt_ids(p, config) for p in prompts], rm.tokenizer.pad_token_id, "left", dev)
        r_cache = DynamicCache()
        rm.token_rewards(r_ids, r_mask, past_key_values=r_cache)  # prefill the prompt
        B, prev = len(prompts), None
        done, running, responses = [False] * B, [float("nan")] * B, [[] for _ in range(B)]
        for step in range(config.max_new_tokens):
            top_logp, top_ids = self._propose(logits, step, config.k)  # (B, k)
            new = top_ids.to(dev) if prev is None else torch.cat([prev[:, None].to(dev), top_ids.to(dev)], dim=1)  # (B, Q)
            n_prev = 0 if prev is None else 1
            mask4d, positions = _candidate_mask(r_mask, n_prev, config.k, self.mask_kind, rm.head.weight.dtype)
            rewards = rm.token_rewards(new, mask4d, past_key_values=r_cache, position_ids=positions)[:, n_prev:].float().cpu()
            r_cache.crop(-config.k)  # drop the candidates; the chosen one is re-fed as `prev` next step
            if n_prev:
                r_mask = torch.cat([r_mask, torch.ones_like(r_mask[:, :1])], dim=1)
            scores = score(rewards, top_logp.cpu())
            choice = self._choose(scores, config, generators)
            chosen = top_ids.gather(1, choice.to(top_ids.device)[:, None]).squeeze(1)  # (B,)
            yield from self._events(step, top_ids, top_logp, rewards, scores, choice, done, running, responses, config)
            if all(done):
                return
            logits, p_mask = self._policy_advance(chosen, p_mask, p_cache)
            prev = chosen

    # ------------------------------------------------------------------ shared path
    @torch.inference_mode()
    def _stream_shared(self, prompts, config: DecodingConfig, score: CandidateScorer, generators) -> Iterator[StepEvent]:
        P, R, rm, k = self.p_stack, self.r_stack, self.rm, config.k
        dev, dtype, pad = rm.device, rm.head.weight.dtype, self.tokenizer.pad_token_id
        kind = self.mask_kind
        pol_prompts = [self._policy_prompt_ids(p, config) for p in prompts]
        rm_prompts = [self._rm_prompt_ids(p, config) for p in prompts]
        S = self.depth if pol_prompts == rm_prompts else 0  # sharing layers needs the same input tokens (no persona)
        top_p, top_r = range(S, len(P.layers)), range(S, len(R.layers))

        p_ids, p_valid = collate(pol_prompts, pad, "left", dev)  # (B, Lp)
        B = p_ids.shape[0]
        p_cache = StaticKVCache(P.config, range(len(P.layers)), B, p_ids.shape[1] + config.max_new_tokens + k + 1, dtype, dev)
        pos = _positions(p_valid)
        mask = prefill_mask(p_valid, kind, dtype)
        trunk = run_layers(P, P.layers[:S], P.embed(p_ids), pos, mask, p_cache)  # (B, Lp, H)
        p_cache.advance(range(S), p_ids.shape[1])
        top = run_layers(P, P.layers[S:], trunk, pos, mask, p_cache)
        p_cache.advance(top_p, p_ids.shape[1])
        logits = self.policy.get_output_embeddings()(P.norm(top[:, -1]))  # (B, V)
        if S:
            r_valid, r_hidden, r_pos, r_mask = p_valid, trunk, pos, mask
        else:
            r_ids, r_valid = collate(rm_prompts, pad, "left", dev)
            r_hidden, r_pos, r_mask = R.embed(r_ids), _positions(r_valid), prefill_mask(r_valid, kind, dtype)
        r_cache = StaticKVCache(R.config, top_r, B, r_valid.shape[1] + config.max_new_tokens + k + 1, dtype, dev)
        run_layers(R, R.layers[S:], r_hidden, r_pos, r_mask, r_cache)
        r_cache.advance(top_r, r_valid.shape[1])

        done, running, responses = [False] * B, [float("nan")] * B, [[] for _ in range(B)]
        rows = torch.arange(B, device=dev)
        for step in range(config.max_new_tokens):
            top_logp, top_ids = self._propose(logits, step, k)  # (B, k)
            cand_ids = top_ids.to(dev)
            if S:  # candidates through the shared layers once, then the RM's own top layers
                cand_pos = p_valid.long().sum(-1, keepdim=True).expand(B, k)
                c_mask = attention_mask(p_valid, k, candidates=True, kind=kind, dtype=dtype)
                cand = run_layers(P, P.layers[:S], P.embed(cand_ids), cand_pos, c_mask, p_cache)  # (B, k, H)
                r_out = run_layers(R, R.layers[S:], cand, cand_pos, c_mask, r_cache)
            else:
                cand_pos = r_valid.long().sum(-1, keepdim=True).expand(B, k)
                c_mask = attention_mask(r_valid, k, candidates=True, kind=kind, dtype=dtype)
                r_out = run_layers(R, R.layers, R.embed(cand_ids), cand_pos, c_mask, r_cache)
            rewards = rm.head(R.norm(r_out).to(dtype)).squeeze(-1).float().cpu()  # (B, k)
            scores = score(rewards, top_logp.cpu())
            choice = self._choose(scores, config, generators)
            yield from self._events(step, top_ids, top_logp, rewards, scores, choice, done, running, responses, config)
            if all(done):
                return
            choice = choice.to(dev)
            chosen = cand_ids[rows, choice]  # (B,)
            p_cache.keep(range(S), choice)
            r_cache.keep(top_r, choice)
            x = cand[rows, choice][:, None] if S else P.embed(chosen[:, None])  # (B, 1, H)
            step_pos = p_valid.long().sum(-1, keepdim=True)
            one_mask = attention_mask(p_valid, 1, candidates=False, kind=kind, dtype=dtype)
            h = run_layers(P, P.layers[S:], x, step_pos, one_mask, p_cache)
            p_cache.advance(top_p, 1)
            logits = self.policy.get_output_embeddings()(P.norm(h[:, 0]))
            ones = torch.ones_like(p_valid[:, :1])
            p_valid = torch.cat([p_valid, ones], dim=1)
            r_valid = p_valid if S else torch.cat([r_valid, ones], dim=1)

    # ------------------------------------------------------------------ general path
    @torch.inference_mode()
    def _stream_general(self, prompts, config: DecodingConfig, score: CandidateScorer, generators) -> Iterator[StepEvent]:
        logits, p_mask, p_cache = self._policy_start(prompts, config)
        B = len(prompts)
        done, running, responses = [False] * B, [float("nan")] * B, [[] for _ in range(B)]
        for step in range(config.max_new_tokens):
            top_logp, top_ids = self._propose(logits, step, config.k)
            rewards = self._score_as_text(prompts, responses, top_ids, config)
            scores = score(rewards, top_logp.cpu())
            choice = self._choose(scores, config, generators)
            chosen = top_ids.gather(1, choice.to(top_ids.device)[:, None]).squeeze(1)
            yield from self._events(step, top_ids, top_logp, rewards, scores, choice, done, running, responses, config)
            if all(done):
                return
            logits, p_mask = self._policy_advance(chosen, p_mask, p_cache)

    def _score_as_text(self, prompts, responses, top_ids, config) -> torch.Tensor:
        """Decode every candidate continuation to text and score all B*k texts in one batch -> (B, k)."""
        seqs, where = [], []
        rewards = torch.full(tuple(top_ids.shape), float("nan"))
        for b, prompt in enumerate(prompts):
            for j, tok in enumerate(top_ids[b].tolist()):
                text = self.tokenizer.decode(responses[b] + [tok], skip_special_tokens=False)
                if not text.strip():
                    continue  # nothing the RM could read yet
                enc = encode(self.rm.tokenizer, prompt, text, max_length=self.rm.spec.max_length,
                             use_chat_template=self.rm.spec.use_chat_template)
                seqs.append(enc.ids)
                where.append((b, j))
        if seqs:
            scores = score_sequences(self.rm, seqs, batch_size=max(1, len(seqs)), bucket=False)
            for (b, j), s in zip(where, scores.tolist()):
                rewards[b, j] = s
        return torch.nan_to_num(rewards, nan=0.0)

def _generators(seed: int, rows) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 1_000_003 + row) for row in rows]


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _candidate_mask(cache_mask: torch.Tensor, n_prev: int, k: int, kind: str, dtype: torch.dtype):
    """Mask and positions for [prev?, c_1..c_k] fed in one row after a cache.

    cache_mask (B, L) marks real cached tokens. Returns a 4D mask (B, 1, Q, L+Q) in which the
    previous token sees the cache and itself and each candidate sees the cache, the previous token and
    itself (not its rivals), and positions (B, Q): every candidate sits at the same position.
    """
    B, L = cache_mask.shape
    Q = n_prev + k
    allowed = torch.zeros(B, 1, Q, L + Q, dtype=torch.bool, device=cache_mask.device)
    allowed[..., :L] = cache_mask[:, None, None, :].bool()
    allowed[..., L:] = torch.eye(Q, dtype=torch.bool, device=cache_mask.device)
    if n_prev:
        allowed[..., L] = True
    base = cache_mask.long().sum(-1, keepdim=True)  # (B, 1) real tokens so far
    positions = torch.cat([base.expand(B, n_prev), (base + n_prev).expand(B, k)], dim=1)
    if kind == "bool":
        return allowed, positions
    additive = torch.zeros(allowed.shape, dtype=dtype, device=cache_mask.device)
    return additive.masked_fill(~allowed, torch.finfo(dtype).min), positions
