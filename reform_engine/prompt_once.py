"""Prompt once: every response of one prompt in one row, the prompt's tokens computed once.

A *unit* is a prompt and the responses scored against it: a pair's two sides, or a robustness item's
clean and perturbed sides (11 responses). Its row is ``[prompt, response 1, response 2, ...]``.
Response k's tokens take positions P, P+1, ... (continuing the prompt's) and see the prompt and their
own earlier tokens only (``layer_stack.segment_mask``), so every token gets the hidden state it gets
when prompt + response is run alone; response k's reward is read at its last token.

Why rows rather than the prompt's KV cache copied to each response (the previous path). Profiled with
torch.profiler, SmolLM2-135M, 12 HH pairs, 1 thread, self CPU time: matrix multiplies are ~70% of
every path, and attention under the explicit mask runs on the CPU flash kernel (12%) in every path,
so the mask costs nothing extra. The copied-cache path lost its time to padding: each batch of
responses padded to its longest and prompts padded within their bucket (matmul 7.7 s against 5.4 s
packed), plus the cache copies (0.2 s). A packed row has no padding between responses and copies
nothing: on 40 HH pairs (benchmarks/bench_scoring.py), 1.61x one pair at a time in CPU time against
a token-count ceiling of 1.63x; the copied-cache path, 1.00x.

Only Llama-style decoders (``layer_stack.Stack``) are packed; ``lower`` lets a caller start the
layers at a split point with hidden states it already has (``trunk_cache``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .layer_stack import Stack, run_layers, segment_mask


@dataclass
class Unit:
    """One prompt and the responses scored against it."""

    prompt: tuple[int, ...]                         # prompt ids, the same for every member
    members: list = field(default_factory=list)     # scoring.Encoded of each response (ids = prompt + response)
    slots: list[int] = field(default_factory=list)  # where each member's reward goes in the caller's flat output


@dataclass
class Packed:
    """Units as right-padded rows. Rewards come out in member order, unit by unit."""

    ids: torch.Tensor                               # (U, W)
    segments: torch.Tensor                          # (U, W): -1 pad, 0 prompt, k = k-th member
    positions: torch.Tensor                         # (U, W)
    reads: torch.Tensor                             # (N,) flat index into U*W of each member's last token
    units: list[Unit]
    spans: list[list[tuple[int, int]]]              # per row: each member's [start, end) columns


def applies(rm) -> bool:
    """Whether ``rm`` is a causal RM on a decoder this module can run layer by layer."""
    return bool(getattr(rm, "is_causal", False)) and Stack.of(rm.backbone) is not None


def units_of(groups: Sequence[Sequence]) -> list[Unit]:
    """Members of one group whose prompt ids are equal form a unit (sides whose prompts were cut
    differently do not share one); slots number the members group by group, in order."""
    units: dict[tuple, Unit] = {}
    slot = 0
    for gi, group in enumerate(groups):
        for e in group:
            prompt = tuple(e.ids[: e.response_start])
            unit = units.setdefault((gi, prompt), Unit(prompt))
            unit.members.append(e)
            unit.slots.append(slot)
            slot += 1
    return list(units.values())


def pack(units: Sequence[Unit], pad_id: int, device=None) -> Packed:
    """Rows ``[prompt, response 1, ...]`` padded on the right to the longest."""
    rows, segs, poss, spans, reads = [], [], [], [], []
    for u in units:
        ids, seg, pos, span = list(u.prompt), [0] * len(u.prompt), list(range(len(u.prompt))), []
        for k, e in enumerate(u.members, start=1):
            response = e.ids[e.response_start:]
            span.append((len(ids), len(ids) + len(response)))
            ids += response
            seg += [k] * len(response)
            pos += range(len(u.prompt), len(u.prompt) + len(response))
        rows.append(ids), segs.append(seg), poss.append(pos), spans.append(span)
    width = max(len(r) for r in rows)
    out = {name: torch.full((len(rows), width), fill, dtype=torch.long) for name, fill in
           (("ids", pad_id), ("segments", -1), ("positions", 0))}
    for i, (ids, seg, pos) in enumerate(zip(rows, segs, poss)):
        out["ids"][i, : len(ids)] = torch.tensor(ids)
        out["segments"][i, : len(seg)] = torch.tensor(seg)
        out["positions"][i, : len(pos)] = torch.tensor(pos)
        reads += [i * width + end - 1 for _, end in spans[i]]
    return Packed(out["ids"].to(device), out["segments"].to(device), out["positions"].to(device),
                  torch.tensor(reads, dtype=torch.long, device=device), list(units), spans)


def _mask(stack: Stack, packed: Packed) -> torch.Tensor:
    kind = "bool" if stack.config._attn_implementation == "sdpa" else "float"
    return segment_mask(packed.segments, kind, stack.embed.weight.dtype)  # (U, 1, W, W)


def lower_states(rm, packed: Packed, split: int) -> torch.Tensor:
    """(U, W, H) hidden states of the packed rows entering layer ``split`` (embeddings for 0)."""
    stack = Stack.of(rm.backbone)
    return run_layers(stack, stack.layers[:split], stack.embed(packed.ids), packed.positions, _mask(stack, packed), None)


def packed_rewards(rm, packed: Packed, lower: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """(N,) rewards of the packed members, in member order. ``lower=(split, hidden)`` starts at layer
    ``split`` from ``hidden`` (U, W, H) instead of the token embeddings."""
    stack = Stack.of(rm.backbone)
    split, hidden = lower if lower is not None else (0, stack.embed(packed.ids))
    hidden = run_layers(stack, stack.layers[split:], hidden, packed.positions, _mask(stack, packed), None)
    last = stack.norm(hidden).reshape(-1, hidden.shape[-1])[packed.reads]  # (N, H)
    return rm.head(last.to(rm.head.weight.dtype)).squeeze(-1)


@torch.inference_mode()
def score_groups(rm, groups: Sequence[Sequence], *, batch_size: int = 16, max_tokens: int = 8192, trunk=None,
                 on_progress=None) -> list[list[float]]:
    """Rewards of groups of ``scoring.Encoded`` (each group answers one prompt) -> one list per group.

    Units are bucketed by row length, ``batch_size // 4`` rows (at most ``max_tokens``) a forward: on
    a CPU one row of a few hundred tokens already keeps the matrix multiplies busy. With ``trunk`` (a
    ``trunk_cache.TrunkCache``) the layers below its split come from the cache.
    ``on_progress(done, total)`` counts scored sequences."""
    from .scoring import length_buckets

    units = units_of(groups)
    flat = [float("nan")] * sum(len(g) for g in groups)
    lengths = [len(u.prompt) + sum(len(e.ids) - e.response_start for e in u.members) for u in units]
    done = 0
    for b in length_buckets(lengths, max(1, batch_size // 4), max_tokens):
        packed = pack([units[j] for j in b], rm.tokenizer.pad_token_id, rm.device)
        lower = (trunk.split, trunk.lower(rm, packed)) if trunk is not None else None
        rewards = packed_rewards(rm, packed, lower).float().cpu().tolist()
        slots = [s for u in packed.units for s in u.slots]
        for s, r in zip(slots, rewards):
            flat[s] = r
        done += len(slots)
        if on_progress:
            on_progress(done, len(flat))
    out, at = [], 0
    for g in groups:
        out.append(flat[at: at + len(g)])
        at += len(g)
    return out
