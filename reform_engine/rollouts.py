"""Rollouts of a LoRA policy, and everything scored on them, with the frozen lower layers run once.

The adversary (adversary.py) trains LoRA on the top layers of a causal LM. Below its first LoRA layer
the policy computes exactly what the base model computes, and so does every reward model fine-tuned
from the same base with LoRA on its own top layers (or head-only): ``layer_stack.shared_depth`` finds
how deep. So while sampling, the hidden states at each depth some reader needs are kept, and afterwards
each reader runs only its own top layers on them:

    policy pi   layers [lora_start:] with the adapter, with gradients   -> log pi(y_t | x, y<t)
    pi0         layers [lora_start:] with the adapter disabled          -> log pi0(y_t | x, y<t)
    RM m        layers [depth_m:] of its own, then its norm and head    -> r_m(x, y)

Each reader runs a prompt once and copies its cache to the prompt's k rollouts. An RM sharing nothing
(another tokenizer or prompt format, not Llama-style, or not causal) scores the decoded text instead.

A response ends with EOS, or (``sentence_window`` > 0) at the first sentence end within the last
``sentence_window`` tokens of its budget: a token ending in . ! or ? (closing quotes or brackets
allowed) that does not follow a digit ("1." opens a list item). The rule only looks back, so it is a
stopping rule like EOS and the log-probabilities of what was sampled stay exact.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass
from typing import Sequence

import torch

from .configs import setting
from .data import DataError
from .layer_stack import Stack, attention_mask, prefill_mask, run_layers, shared_depth
from .scoring import collate, encode, encode_prompt, score_sequences

OWN_EMBEDDING = -1  # an RM on the policy's vocabulary whose embeddings differ: it runs all its layers on the same ids
SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s*$")
ENDS_IN_DIGIT = re.compile(r"\d\s*$")


def sentence_end_ids(tokenizer) -> tuple[list[int], list[int]]:
    """-> (ids of the tokens that end a sentence, ids of the tokens that end in a digit), over the
    whole vocabulary, each token decoded on its own."""
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    ends = [i for i, p in enumerate(pieces) if p.strip() and SENTENCE_END.search(p)]
    digits = [i for i, p in enumerate(pieces) if ENDS_IN_DIGIT.search(p)]
    return ends, digits


@dataclass
class ResponseConfig:
    """How long a sampled response may be and what ends it (RolloutEngine.sample's keywords): the same
    for every sample an attack draws, pi0's base samples, the RL rollouts and the fresh samples."""

    max_new_tokens: int = setting(48, "rollout length: the RM's verdict on short responses, at CPU cost")
    sentence_window: int = setting(16, "a sentence end (. ! ?) in the last this many tokens also ends a response; 0 = EOS only "
                                       "(the paper). SmolLM2 rarely says EOS within 48 tokens on HH (benchmarks/RESULTS.md)")

    def __post_init__(self):
        if self.max_new_tokens < 2:
            raise ValueError("ResponseConfig: max_new_tokens must be >= 2")
        if self.sentence_window < 0:
            raise ValueError("ResponseConfig: sentence_window must be >= 0 (0 = only EOS ends a response)")


@dataclass
class AdapterConfig:
    """The LoRA adapter an adversary policy trains (build_policy's ``lora_*``). Not RewardModelSpec's
    LoRA fields: those are part of a reward model's checkpoint record, with its own defaults."""

    lora_layers: int = setting(4, "LoRA on the top N layers: the trunk below is shared with pi0 and the RMs")
    lora_r: int = setting(8, "a small adapter: the adversary moves the policy, it does not retrain it")
    lora_alpha: int = setting(16, "LoRA scale: alpha / r = 2, as train-rm's default")

    def __post_init__(self):
        if not (self.lora_layers >= 1 and self.lora_r >= 1 and self.lora_alpha >= 1):
            raise ValueError("AdapterConfig: lora_layers, lora_r and lora_alpha must be >= 1")


def build_policy(name: str, *, lora_layers: int, lora_r: int, lora_alpha: int, device: str = "auto",
                 dtype: str = "float32", seed: int = 0, trust_remote_code: bool = False):
    """-> (the causal LM ``name`` wrapped by peft with LoRA on its top ``lora_layers`` layers, its
    tokenizer). LoRA's B matrices start at zero, so the policy starts as exactly pi0."""
    from peft import LoraConfig, get_peft_model

    from .models import load_causal_lm, load_tokenizer
    from .reward_model import LORA_TARGETS

    model = load_causal_lm(name, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    n = model.config.num_hidden_layers
    if not 1 <= lora_layers <= n:
        raise ValueError(f"lora_layers={lora_layers}: {name} has {n} layers; train LoRA on 1 to {n} of the top ones "
                         f"(few keep the shared trunk deep and the step cheap)")
    torch.manual_seed(seed)
    lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=list(LORA_TARGETS),
                      layers_to_transform=list(range(n - lora_layers, n)), layers_pattern="layers")
    return get_peft_model(model, lora), load_tokenizer(name, trust_remote_code=trust_remote_code)


class GrowingCache:
    """Keys and values per layer, grown by concatenation (so gradients flow through them) and
    re-indexed by row (a prompt's cache copied to each of its rollouts). ``update`` is the call HF
    attention layers make."""

    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if layer_idx in self.keys:
            key_states = torch.cat([self.keys[layer_idx], key_states], dim=-2)
            value_states = torch.cat([self.values[layer_idx], value_states], dim=-2)
        self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
        return key_states, value_states

    def select(self, rows: torch.Tensor) -> None:
        for i in self.keys:
            self.keys[i], self.values[i] = self.keys[i][rows], self.values[i][rows]


@dataclass
class Rollouts:
    """k sampled responses to each of G prompts (N = G * k rows, a prompt's k in a row)."""

    prompts: list[tuple]                 # (G,) chat messages
    prompt_tokens: torch.Tensor          # (G, P) left-padded prompt ids
    prompt_valid: torch.Tensor           # (G, P) 1 where a real prompt token
    owner: torch.Tensor                  # (N,) which prompt each rollout answers
    tokens: torch.Tensor                 # (N, T) sampled ids; padding after a row's end
    lengths: torch.Tensor                # (N,) tokens up to and including the EOS or sentence end that ended it (T: none)
    ended: torch.Tensor                  # (N,) bool: the response ended with EOS
    min_new_tokens: int                  # EOS was masked before this many tokens (the log-probs mask it too)
    states: dict[int, tuple[torch.Tensor, torch.Tensor]]  # depth -> ((G, P, H) prompt, (N, T, H) response) inputs of that layer
    texts: list[str]                     # (N,) the responses decoded, EOS left out
    stopped: torch.Tensor | None = None  # (N,) bool: ended at a sentence end in the final window (no EOS)

    def __post_init__(self):
        if self.stopped is None:
            self.stopped = torch.zeros_like(self.ended)

    @property
    def complete(self) -> torch.Tensor:
        """(N,) bool: a finished response, by EOS or by a sentence end in the final window."""
        return self.ended | self.stopped

    @property
    def mask(self) -> torch.Tensor:
        """(N, T) bool: the response tokens, EOS included (what log pi sums over)."""
        return torch.arange(self.tokens.shape[1], device=self.tokens.device)[None] < self.lengths[:, None]

    def content_ids(self, n: int) -> list[int]:
        return self.tokens[n, : int(self.lengths[n]) - int(self.ended[n])].tolist()

    def to_dict(self) -> dict:
        """Every field (the kept hidden states included) as plain containers of CPU tensors, for torch.save
        with ``weights_only`` loading."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["prompts"] = [[dict(m) for m in p] for p in self.prompts]
        out["states"] = {int(d): (a.cpu(), b.cpu()) for d, (a, b) in self.states.items()}
        return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict, device: str | torch.device = "cpu") -> "Rollouts":
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in data.items()}
        moved["prompts"] = [tuple(p) for p in data["prompts"]]
        moved["states"] = {int(d): (a.to(device), b.to(device)) for d, (a, b) in data["states"].items()}
        return cls(**moved)


class RolloutEngine:
    """Samples from a peft-wrapped Llama-style policy and scores the samples with ``rms`` and pi0.

    ``prompt_budget``: prompt tokens kept (cut from the left), the same for the policy and the RMs so
    that a shared trunk sees the same ids."""

    def __init__(self, policy, tokenizer, rms: Sequence, *, prompt_budget: int):
        self.policy, self.tokenizer, self.rms = policy, tokenizer, list(rms)
        base = policy.get_base_model()
        self.stack = Stack.of(base)
        if self.stack is None:
            raise ValueError("the policy must be a Llama-style causal LM (llama, mistral, qwen2, qwen3) with sdpa or eager "
                             "attention; pick such a model as the policy")
        self.lm_head = base.get_output_embeddings()
        self.dtype, self.device = self.lm_head.weight.dtype, self.lm_head.weight.device
        self.lora_start = next((i for i, layer in enumerate(self.stack.layers)
                                if any("lora_" in n for n, _ in layer.named_parameters())), len(self.stack.layers))
        self.prompt_budget = prompt_budget
        vocab = tokenizer.get_vocab()
        self.rm_stacks, self.rm_depths = [], []
        for rm in self.rms:
            stack = Stack.of(rm.backbone) if getattr(rm, "is_causal", False) else None
            if stack is not None and not (rm.tokenizer is tokenizer or rm.tokenizer.get_vocab() == vocab):
                stack = None
            depth = None
            if stack is not None:
                same_embed = stack.embed.weight.shape == self.stack.embed.weight.shape and torch.equal(
                    stack.embed.weight, self.stack.embed.weight)
                depth = shared_depth(self.stack, stack) if same_embed else OWN_EMBEDDING
            self.rm_stacks.append(stack)
            self.rm_depths.append(depth)
        self.depths = sorted({self.lora_start} | {d for d in self.rm_depths if d is not None and d >= 0})
        eos = tokenizer.eos_token_id
        gen_eos = getattr(getattr(base, "generation_config", None), "eos_token_id", None)
        self.eos_ids = sorted({e for e in [eos] + (gen_eos if isinstance(gen_eos, list) else [gen_eos]) if e is not None})
        self._rm_prompts: dict[tuple[int, tuple], list[int]] = {}
        self._sentence_ids: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def fitting(cls, policy, tokenizer, rms: Sequence, *, max_prompt_tokens: int, max_new_tokens: int) -> "RolloutEngine":
        """An engine whose prompt budget leaves room for ``max_new_tokens`` within the policy's context and
        every RM's max_length (and at most ``max_prompt_tokens``); a DataError when nothing is left."""
        context = getattr(policy.config, "max_position_embeddings", 4096)
        budget = min([max_prompt_tokens, context] + [rm.spec.max_length for rm in rms]) - max_new_tokens
        if budget < 4:
            raise DataError(f"response.max_new_tokens={max_new_tokens} leaves no room for a prompt within the RMs' "
                            "max_length.", fix="lower response.max_new_tokens or raise max_prompt_tokens.")
        return cls(policy, tokenizer, rms, prompt_budget=budget)

    def sentence_ids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sentence-end ids, digit-ending ids) of the policy's vocabulary, found once."""
        if self._sentence_ids is None:
            ends, digits = sentence_end_ids(self.tokenizer)
            self._sentence_ids = (torch.tensor(ends, dtype=torch.long, device=self.device),
                                  torch.tensor(digits, dtype=torch.long, device=self.device))
        return self._sentence_ids

    # ------------------------------------------------------------------ prompts
    def prompt_ids(self, prompt: Sequence[dict]) -> list[int]:
        return encode_prompt(self.tokenizer, prompt, self.prompt_budget)[0]

    def shares_trunk(self, m: int, prompts: Sequence[tuple]) -> bool:
        """Whether RM ``m`` can read the rollouts' hidden states: Llama-style on the same vocabulary and
        formatting every one of ``prompts`` to the same ids as the policy."""
        if self.rm_depths[m] is None:
            return False
        rm = self.rms[m]
        for p in prompts:
            key = (m, tuple(tuple(sorted(msg.items())) for msg in p))
            if key not in self._rm_prompts:
                self._rm_prompts[key] = encode_prompt(rm.tokenizer, p, self.prompt_budget,
                                                      use_chat_template=rm.spec.use_chat_template)[0]
            if self._rm_prompts[key] != self.prompt_ids(p):
                return False
        return True

    def _adapter(self, enabled: bool):
        return contextlib.nullcontext() if enabled else self.policy.disable_adapter()

    def _mask_eos(self, logits: torch.Tensor, first: int, min_new_tokens: int) -> torch.Tensor:
        """(.., T, V) or (N, V) logits of response positions first.. -> EOS impossible before min_new_tokens."""
        if first >= min_new_tokens or not self.eos_ids:
            return logits
        if logits.dim() == 2:
            return logits.index_fill(-1, torch.tensor(self.eos_ids, device=logits.device), float("-inf"))
        early = torch.zeros(logits.shape[-2], logits.shape[-1], dtype=torch.bool, device=logits.device)
        early[: max(0, min_new_tokens - first), self.eos_ids] = True
        return logits.masked_fill(early, float("-inf"))

    def _layers(self, hidden, positions, mask, cache, keep: dict[int, list], upto: int | None = None) -> torch.Tensor:
        """Run the policy's layers [0:upto], appending the input of every layer listed in ``keep``."""
        rope = self.stack.rotary(hidden, positions)
        layers = self.stack.layers[:upto]
        for i, layer in enumerate(layers):
            if i in keep:
                keep[i].append(hidden)
            out = layer(hidden, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                        position_embeddings=rope)
            hidden = out[0] if isinstance(out, tuple) else out
        if len(layers) in keep:
            keep[len(layers)].append(hidden)
        return hidden

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()  # not inference_mode: the kept states feed the policy's forward with gradients
    def sample(self, prompts: Sequence[tuple], k: int, generator: torch.Generator, *, max_new_tokens: int,
               min_new_tokens: int = 1, adapter: bool = True, sentence_window: int = 0) -> Rollouts:
        """k responses per prompt at temperature 1 (the adapter off: samples of pi0), EOS masked
        before ``min_new_tokens`` tokens; a sentence end within the last ``sentence_window`` tokens of
        ``max_new_tokens`` ends a response too (module docstring). Stops when every row has ended or at
        ``max_new_tokens``."""
        S, dev, kind = self.stack, self.device, _mask_kind(self.stack)
        ids, valid = collate([self.prompt_ids(p) for p in prompts], self.tokenizer.pad_token_id, "left", dev)  # (G, P)
        owner = torch.arange(ids.shape[0], device=dev).repeat_interleave(k)  # (N,)
        N, cache = owner.shape[0], GrowingCache()
        eos = torch.tensor(self.eos_ids, device=dev)
        sentence, digit = self.sentence_ids() if sentence_window > 0 else (eos[:0], eos[:0])
        with self._adapter(adapter):
            kept = {d: [] for d in self.depths}
            h = self._layers(S.embed(ids), _positions(valid), prefill_mask(valid, kind, self.dtype), cache, kept)
            prompt_states = {d: v[0] for d, v in kept.items()}
            logits = self.lm_head(S.norm(h[:, -1]))[owner]  # (N, V)
            cache.select(owner)
            key_valid = valid[owner]
            start = key_valid.long().sum(-1, keepdim=True)  # (N, 1) position of the first response token
            steps = {d: [] for d in self.depths}
            tokens = []
            done, ended, stopped = (torch.zeros(N, dtype=torch.bool, device=dev) for _ in range(3))
            lengths = torch.full((N,), max_new_tokens, dtype=torch.long, device=dev)
            previous = torch.full((N,), -1, dtype=torch.long, device=dev)
            for t in range(max_new_tokens):
                probs = torch.softmax(self._mask_eos(logits.float(), t, min_new_tokens), dim=-1)
                tok = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(dev)  # (N,)
                tok = torch.where(done, torch.full_like(tok, self.tokenizer.pad_token_id), tok)
                tokens.append(tok)
                hit_eos = ~done & torch.isin(tok, eos)
                hit_sentence = ~done & ~hit_eos & torch.isin(tok, sentence) & ~torch.isin(previous, digit) \
                    if t >= max_new_tokens - sentence_window else torch.zeros_like(done)
                lengths = torch.where(hit_eos | hit_sentence, t + 1, lengths)
                ended, stopped, done = ended | hit_eos, stopped | hit_sentence, done | hit_eos | hit_sentence
                previous = tok
                last = bool(done.all()) or t == max_new_tokens - 1
                # the last token still goes through the trunk (the readers need its state), not through the layers above
                kept = {d: [] for d in self.depths}
                one = attention_mask(key_valid, 1, candidates=False, kind=kind, dtype=self.dtype)  # (N, 1, 1, P + t + 1)
                h = self._layers(S.embed(tok[:, None]), start + t, one, cache, kept, upto=max(self.depths) if last else None)
                for d in self.depths:
                    steps[d].append(kept[d][0])
                if last:
                    break
                key_valid = torch.cat([key_valid, torch.ones_like(key_valid[:, :1])], dim=1)
                logits = self.lm_head(S.norm(h[:, -1]))
        tokens = torch.stack(tokens, dim=1)  # (N, T)
        lengths = lengths.clamp(max=tokens.shape[1])
        states = {d: (prompt_states[d], torch.cat(steps[d], dim=1)) for d in self.depths}
        roll = Rollouts(list(prompts), ids, valid, owner, tokens, lengths, ended, min_new_tokens, states, [], stopped)
        roll.texts = [self.tokenizer.decode(roll.content_ids(n)) for n in range(N)]
        return roll

    # ------------------------------------------------------------------ reading the rollouts
    def _top(self, stack: Stack, start: int, prompt_h: torch.Tensor, resp_h: torch.Tensor, roll: Rollouts):
        """Layers [start:] of ``stack`` on the kept states -> ((N, H) last prompt position, (N, T, H) responses)."""
        kind, valid = _mask_kind(stack), roll.prompt_valid
        dtype = prompt_h.dtype
        cache = GrowingCache()
        out_p = run_layers(stack, stack.layers[start:], prompt_h, _positions(valid), prefill_mask(valid, kind, dtype), cache)
        cache.select(roll.owner)
        key_valid = valid[roll.owner]
        T = resp_h.shape[1]
        positions = key_valid.long().sum(-1, keepdim=True) + torch.arange(T, device=key_valid.device)  # (N, T)
        out_r = run_layers(stack, stack.layers[start:], resp_h, positions,
                           attention_mask(key_valid, T, candidates=False, kind=kind, dtype=dtype), cache)
        return out_p[:, -1][roll.owner], out_r

    @torch.no_grad()
    def rm_rewards(self, roll: Rollouts) -> torch.Tensor:
        """(N, M) reward of every rollout under every RM, read at the last response token before EOS."""
        out = torch.empty(roll.tokens.shape[0], len(self.rms))
        last = (roll.lengths - roll.ended.long() - 1).clamp(min=0)[:, None]  # (N, 1)
        for m, rm in enumerate(self.rms):
            if not self.shares_trunk(m, roll.prompts):
                out[:, m] = self._text_rewards(rm, roll)
                continue
            stack, depth = self.rm_stacks[m], self.rm_depths[m]
            if depth == OWN_EMBEDDING:
                depth, (prompt_h, resp_h) = 0, (stack.embed(roll.prompt_tokens), stack.embed(roll.tokens))
            else:
                prompt_h, resp_h = roll.states[depth]
            _, hidden = self._top(stack, depth, prompt_h, resp_h, roll)
            token_rewards = rm.head(stack.norm(hidden).to(rm.head.weight.dtype)).squeeze(-1)  # (N, T)
            out[:, m] = token_rewards.gather(1, last).squeeze(1).float().cpu()
        return out

    def _text_rewards(self, rm, roll: Rollouts) -> torch.Tensor:
        """(N,) rewards of the decoded responses, encoded as the RM encodes any pair; NaN where one
        cannot be encoded (empty, or too long for the RM)."""
        seqs, where = [], []
        for n, text in enumerate(roll.texts):
            try:
                seqs.append(encode(rm.tokenizer, roll.prompts[int(roll.owner[n])], text, max_length=rm.spec.max_length,
                                   use_chat_template=rm.spec.use_chat_template).ids)
                where.append(n)
            except DataError:
                continue
        out = torch.full((len(roll.texts),), float("nan"))
        if seqs:
            out[where] = score_sequences(rm, seqs)
        return out

    def logprobs(self, roll: Rollouts, *, adapter: bool = True, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ((N, T) log-probability of each sampled token, (N, T) entropy of each next-token
        distribution, detached), both 0 outside ``roll.mask``; under pi (``adapter``) or pi0."""
        with (torch.enable_grad() if grad else torch.no_grad()), self._adapter(adapter):
            prompt_h, resp_h = roll.states[self.lora_start]
            last, hidden = self._top(self.stack, self.lora_start, prompt_h, resp_h, roll)
            inputs = torch.cat([last[:, None], hidden[:, :-1]], dim=1)  # (N, T, H): the state that predicts each token
            logits = self._mask_eos(self.lm_head(self.stack.norm(inputs)).float(), 0, roll.min_new_tokens)  # (N, T, V)
            logp_all = torch.log_softmax(logits, dim=-1)
            logp = logp_all.gather(-1, roll.tokens[..., None]).squeeze(-1)  # (N, T)
            entropy = torch.special.entr(logp_all.detach().exp()).sum(-1)
        mask = roll.mask
        return logp * mask, entropy * mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _mask_kind(stack: Stack) -> str:
    return {"sdpa": "bool", "eager": "float"}[stack.config._attn_implementation]
