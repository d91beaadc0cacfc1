"""A Llama-style decoder run layer by layer: preallocated KV caches, explicit masks, and a split point.

Controlled decoding runs a policy and a reward model side by side on the same tokens. When the RM was
fine-tuned with LoRA on its top layers only (or head-only), its lower layers are the policy's, weight
for weight: ``shared_depth`` finds how many, and the decoder computes them once for both models.

The cache is allocated once for the whole generation and written in place, so a step costs the same
whatever the length of the text so far (apart from attention reading the cached keys). Candidate
tokens are written after the committed tokens; ``keep`` moves the chosen one into place and the
others are simply overwritten later.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


LLAMA_STYLE = ("llama", "mistral", "qwen2", "qwen3")  # pre-norm decoders whose forward is embed -> layers -> norm


@dataclass
class Stack:
    """The parts of a Llama-style model we call directly."""

    embed: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    rotary: nn.Module
    config: object

    @classmethod
    def of(cls, model: nn.Module) -> "Stack | None":
        """The decoder inside a causal LM or a bare backbone; None when the layout is not Llama-style."""
        inner = getattr(model, "model", model)
        if getattr(inner.config, "model_type", None) not in LLAMA_STYLE:
            return None
        parts = [getattr(inner, n, None) for n in ("embed_tokens", "layers", "norm", "rotary_emb")]
        if any(p is None for p in parts) or getattr(inner.config, "_attn_implementation", None) not in ("sdpa", "eager"):
            return None
        if getattr(inner.config, "layer_types", None) and any(t != "full_attention" for t in inner.config.layer_types):
            return None  # sliding-window layers would need their own masks
        return cls(*parts, inner.config)


def shared_depth(a: Stack, b: Stack) -> int:
    """How many leading layers (after identical embeddings) two stacks share exactly; 0 if none."""
    if a.embed.weight.shape != b.embed.weight.shape or not torch.equal(a.embed.weight, b.embed.weight):
        return 0
    depth = 0
    for la, lb in zip(a.layers, b.layers):
        pa, pb = dict(la.named_parameters()), dict(lb.named_parameters())
        if pa.keys() != pb.keys() or not all(torch.equal(pa[n], pb[n]) for n in pa):
            break
        depth += 1
    return depth


class StaticKVCache:
    """KV buffers of shape (B, kv_heads, max_len, head_dim) per layer, with a committed length per layer.

    Implements the ``update(key, value, layer_idx)`` call that HF attention modules make."""

    def __init__(self, config, layer_ids, batch: int, max_len: int, dtype: torch.dtype, device):
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (batch, heads, max_len, head_dim)
        self.keys = {i: torch.zeros(shape, dtype=dtype, device=device) for i in layer_ids}
        self.values = {i: torch.zeros(shape, dtype=dtype, device=device) for i in layer_ids}
        self.length = {i: 0 for i in layer_ids}
        self.max_len = max_len

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        start, q = self.length[layer_idx], key_states.shape[-2]
        if start + q > self.max_len:
            raise RuntimeError(f"KV cache of {self.max_len} tokens is full; allocate a longer one")
        self.keys[layer_idx][:, :, start:start + q] = key_states
        self.values[layer_idx][:, :, start:start + q] = value_states
        return self.keys[layer_idx][:, :, :start + q], self.values[layer_idx][:, :, :start + q]

    def advance(self, layer_ids, q: int) -> None:
        """Commit the q tokens just written."""
        for i in layer_ids:
            self.length[i] += q

    def keep(self, layer_ids, choice: torch.Tensor) -> None:
        """Of the candidates just written after the committed tokens, commit candidate ``choice[b]`` of row b."""
        rows = torch.arange(choice.shape[0], device=choice.device)
        for i in layer_ids:
            at = self.length[i]
            self.keys[i][:, :, at] = self.keys[i][rows, :, at + choice]
            self.values[i][:, :, at] = self.values[i][rows, :, at + choice]
            self.length[i] += 1


def run_layers(stack: Stack, layers, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
    """(B, Q, H) hidden states through ``layers`` with (B, Q) positions and a (B, 1, Q, K) mask."""
    if len(layers) == 0:
        return hidden
    rope = stack.rotary(hidden, positions)
    for layer in layers:
        out = layer(hidden, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                    position_embeddings=rope)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def attention_mask(key_valid: torch.Tensor, q: int, *, candidates: bool, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """Mask for q new tokens after ``key_valid`` (B, L) committed keys -> (B, 1, q, L + q).

    New tokens see every valid committed key. Among themselves they are causal (a prompt or a
    continuation) or, for ``candidates``, each sees only itself. A padding query that would see
    nothing sees itself, so no row is all-masked (sdpa returns NaN for those)."""
    B, L = key_valid.shape
    new = torch.eye(q, dtype=torch.bool, device=key_valid.device) if candidates else \
        torch.ones(q, q, dtype=torch.bool, device=key_valid.device).tril()
    allowed = torch.cat([key_valid.bool()[:, None, None, :].expand(B, 1, q, L), new.expand(B, 1, q, q)], dim=-1)
    allowed[..., L:] |= torch.eye(q, dtype=torch.bool, device=key_valid.device)
    if kind == "bool":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=key_valid.device).masked_fill(~allowed, torch.finfo(dtype).min)


def prefill_mask(pad_mask: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """Causal mask over a left-padded prompt (B, P): pad keys hidden -> (B, 1, P, P)."""
    B, P = pad_mask.shape
    causal = torch.ones(P, P, dtype=torch.bool, device=pad_mask.device).tril()
    allowed = causal[None, None] & pad_mask.bool()[:, None, None, :]
    allowed |= torch.eye(P, dtype=torch.bool, device=pad_mask.device)
    if kind == "bool":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=pad_mask.device).masked_fill(~allowed, torch.finfo(dtype).min)


def segment_mask(segments: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """Mask for packed rows (B, W) of segment ids -> (B, 1, W, W).

    Segment 0 is a prompt, k > 0 is its k-th response, -1 is padding. Causal everywhere; a response
    sees the prompt and its own earlier tokens, never another response; a pad sees only itself (no
    all-masked row)."""
    W = segments.shape[1]
    eye = torch.eye(W, dtype=torch.bool, device=segments.device)
    q, k = segments[:, :, None], segments[:, None, :]  # (B, W, 1), (B, 1, W)
    allowed = torch.ones(W, W, dtype=torch.bool, device=segments.device).tril() & (q >= 0) & ((k == 0) | (k == q))
    allowed = (allowed | eye)[:, None]
    if kind == "bool":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(~allowed, torch.finfo(dtype).min)
