"""Turning (prompt, response) into token ids, and scoring them in length-bucketed batches.

The RM input is ``format_prompt(prompt) ++ response`` tokenized as two pieces and concatenated, so
the ids of a response prefix are a prefix of the ids of the whole response: the partial reward at
response token i (from ``reward_trace``) is exactly the score of the response cut after token i.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .configs import required, setting
from .data import DEMO_PATH, DataError, PreferenceData, PreferencePair, load_preferences, ROWS_HELP, parse_rows, select_rows
from .models import format_prompt

MIN_PROMPT_TOKENS = 4  # a prompt cut below this no longer says what was asked
SCORE_MAX_LENGTH = 1024  # tokens per scored prompt + response when scoring a data set (jobs' and app's default)


@dataclass
class ScoringJob:
    """The fields every job that scores preference pairs with a reward model starts with (its config
    adds its own, then its ``runtime``)."""

    reward_model: str = required("a checkpoint directory from train-rm, or a sequence-classification model id or directory")
    data: str = setting(str(DEMO_PATH), "preference data: a file or a hub id")
    rows: str = setting("", "source rows: " + ROWS_HELP)
    skip_invalid: bool = setting(True, "invalid rows are skipped and counted, not fatal")
    max_length: int = setting(SCORE_MAX_LENGTH, "tokens per prompt + response; the prompt is cut from the left to fit")

    def __post_init__(self):
        parse_rows(self.rows)

    def read_pairs(self) -> tuple[PreferenceData, list[PreferencePair]]:
        """(the data as read, the pairs of the selected rows)."""
        data = load_preferences(self.data, skip_invalid=self.skip_invalid)
        return data, select_rows(data.pairs, self.rows)


@dataclass(frozen=True)
class Encoded:
    ids: tuple[int, ...]
    response_start: int           # ids[response_start:] are the response
    prompt_truncated: bool        # earlier turns (or the start of the first kept turn) were dropped to fit


def _prompt_ids(tokenizer, messages, use_chat_template: bool, system: str | None = None) -> list[int]:
    chat = use_chat_template and getattr(tokenizer, "chat_template", None)
    if system is not None and chat:
        messages = [{"role": "system", "content": system}] + list(messages)
    text = format_prompt(tokenizer, messages, use_chat_template=use_chat_template)
    if system is not None and not chat:  # HH-style text has no system turn: the persona's text comes first
        text = system + text
    return tokenizer(text, add_special_tokens=not chat)["input_ids"]


def encode_prompt(tokenizer, prompt: Sequence[dict], budget: int, *, use_chat_template: bool = True,
                  system: str | None = None) -> tuple[list[int], bool]:
    """Prompt ids of at most ``budget`` tokens, cut from the left: whole early turns first, then the
    start of the last user turn. ``system`` (a policy persona's text, personas.py) is a system message
    before the turns that no cut removes. -> (ids, truncated)."""
    messages = list(prompt)
    ids = _prompt_ids(tokenizer, messages, use_chat_template, system)
    truncated = False
    while len(ids) > budget and len(messages) > 1:  # drop the oldest turn, keep the last ones
        messages = messages[1:]
        while len(messages) > 1 and messages[0]["role"] != "user":
            messages = messages[1:]
        ids, truncated = _prompt_ids(tokenizer, messages, use_chat_template, system), True
    while len(ids) > budget:  # one long user turn left: cut the start of its text
        content_ids = tokenizer(messages[0]["content"], add_special_tokens=False)["input_ids"]
        keep = len(content_ids) - (len(ids) - budget) - 1
        if keep < 1:
            raise DataError(f"the prompt cannot be cut to fit {budget} tokens.", fix="raise max_length or shorten the response.")
        messages = [{"role": messages[0]["role"], "content": tokenizer.decode(content_ids[-keep:])}]
        ids, truncated = _prompt_ids(tokenizer, messages, use_chat_template, system), True
    return ids, truncated


def encode(tokenizer, prompt: Sequence[dict], response: str, *, max_length: int, use_chat_template: bool = True,
           response_ids: Sequence[int] | None = None) -> Encoded:
    """Tokenize one side. The prompt is cut from the left until prompt + response fit ``max_length``;
    the response is never cut."""
    resp = list(response_ids) if response_ids is not None else tokenizer(response, add_special_tokens=False)["input_ids"]
    if not resp:
        raise DataError("the response is empty.", fix="give a non-empty response.")
    budget = max_length - len(resp)
    if budget < MIN_PROMPT_TOKENS:
        raise DataError(f"the response alone is {len(resp)} tokens; with max_length={max_length} no prompt fits.",
                        fix=f"raise max_length above {len(resp) + MIN_PROMPT_TOKENS} or shorten the response.")
    try:
        ids, truncated = encode_prompt(tokenizer, prompt, budget, use_chat_template=use_chat_template)
    except DataError as exc:
        raise DataError(f"the prompt cannot fit beside a {len(resp)}-token response within max_length={max_length}.",
                        fix="raise max_length or shorten the response.") from exc
    return Encoded(tuple(ids) + tuple(resp), len(ids), truncated)


def encode_pairs(rm, pairs: Sequence[PreferencePair], *, max_length: int | None = None,
                 skip_too_long: bool = False) -> list[tuple[Encoded, Encoded] | None]:
    """Encode both sides of each pair with the RM's tokenizer and prompt format; errors name the pair.
    ``skip_too_long``: a pair that cannot fit ``max_length`` (a response longer than the limit) is None
    instead of an error."""
    max_length = max_length or rm.spec.max_length
    out = []
    for p in pairs:
        try:
            out.append(tuple(encode(rm.tokenizer, p.prompt, side, max_length=max_length,
                                    use_chat_template=rm.spec.use_chat_template) for side in (p.chosen, p.rejected)))
        except DataError as exc:
            if not skip_too_long:
                raise DataError(exc.message, source=f"pair {p.pair_id}", fix=exc.fix) from exc
            out.append(None)
    return out


def collate(seqs: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right", device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence in the batch -> (B, T) ids and (B, T) mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if padding_side == "left" else slice(0, len(s))
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    return ids.to(device), mask.to(device)


def length_buckets(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted), so padding wastes little compute.
    ``max_tokens`` caps batch_size x longest length for long sequences."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, cur = [], []
    for i in order:
        widest = max(lengths[i], max((lengths[j] for j in cur), default=0))
        if cur and (len(cur) >= batch_size or (max_tokens and widest * (len(cur) + 1) > max_tokens)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


@torch.inference_mode()
def score_sequences(rm, seqs: Sequence[Sequence[int]], *, batch_size: int = 16, max_tokens: int | None = 8192,
                    bucket: bool = True, on_progress=None) -> torch.Tensor:
    """Rewards of token sequences -> (N,) float32 on CPU. ``bucket=False`` keeps the given order
    (batches then mix short and long sequences and pad to the longest). ``on_progress(n)`` is
    called with the number of sequences each batch scored."""
    lengths = [len(s) for s in seqs]
    batches = length_buckets(lengths, batch_size, max_tokens) if bucket else \
        [list(range(i, min(i + batch_size, len(seqs)))) for i in range(0, len(seqs), batch_size)]
    out = torch.empty(len(seqs), dtype=torch.float32)
    side = "right" if not rm.is_causal else rm.tokenizer.padding_side
    for b in batches:
        ids, mask = collate([seqs[i] for i in b], rm.tokenizer.pad_token_id, side, rm.device)
        out[b] = rm.score(ids, mask).float().cpu()
        if on_progress:
            on_progress(len(b))
    return out


REDUCTIONS = ("mean", "none")


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """(N,), (N,) rewards -> the Bradley-Terry loss -log sigmoid(r+ - r-): its mean (scalar) for
    training, or with ``reduction="none"`` each pair's (N,) for ranking pairs by influence."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; use 'mean' (training) or 'none' (one loss per pair)")
    losses = -F.logsigmoid(r_chosen - r_rejected)
    return losses.mean() if reduction == "mean" else losses


@dataclass
class PairScores:
    r_chosen: torch.Tensor    # (N,) over the scored pairs
    r_rejected: torch.Tensor  # (N,)
    truncated: int            # how many sides had their prompt cut to fit
    skipped: tuple[int, ...] = ()  # input positions of the pairs left unscored: too long for max_length (skip_too_long)

    def scored(self, pairs: Sequence[PreferencePair]) -> list[PreferencePair]:
        """The pairs these scores belong to: ``pairs`` without the skipped ones, in order."""
        left_out = set(self.skipped)
        return [p for i, p in enumerate(pairs) if i not in left_out]

    @property
    def margins(self) -> torch.Tensor:
        return self.r_chosen - self.r_rejected

    @property
    def losses(self) -> torch.Tensor:
        """Bradley-Terry loss of each pair: -log sigmoid(r+ - r-)."""
        return bradley_terry_loss(self.r_chosen, self.r_rejected, reduction="none")


def score_pairs(rm, pairs: Sequence[PreferencePair], *, batch_size: int = 16, max_length: int | None = None,
                bucket: bool = True, share_prompt: bool = True, skip_too_long: bool = False, on_progress=None,
                trunk=None) -> PairScores:
    """Rewards of both sides of every pair. With a causal RM and ``share_prompt`` the prompt, which
    both sides share, is run once for the two responses (``score_encoded_groups``; ``trunk``: a
    ``trunk_cache.TrunkCache`` serving the frozen lower layers).
    ``skip_too_long``: a pair with a response too long for ``max_length`` is left out (listed in
    ``skipped``) instead of failing the whole run. ``on_progress(done, total)`` counts scored sides."""
    encoded = encode_pairs(rm, pairs, max_length=max_length, skip_too_long=skip_too_long)
    skipped = tuple(i for i, e in enumerate(encoded) if e is None)
    enc = [e for e in encoded if e is not None]
    truncated = sum(e.prompt_truncated for pair in enc for e in pair)
    if not enc:
        return PairScores(torch.empty(0), torch.empty(0), 0, skipped)
    if share_prompt and rm.is_causal and bucket:
        out = score_encoded_groups(rm, enc, batch_size=batch_size, on_progress=on_progress, trunk=trunk)
        return PairScores(torch.tensor([g[0] for g in out]), torch.tensor([g[1] for g in out]), truncated, skipped)
    seqs = [e.ids for pair in enc for e in pair]
    scores = score_sequences(rm, seqs, batch_size=batch_size, bucket=bucket, on_progress=_counter(len(seqs), on_progress))
    return PairScores(scores[0::2].clone(), scores[1::2].clone(), truncated, skipped)


def _counter(total: int, on_progress):
    """Turn per-batch counts into on_progress(done, total) calls."""
    if on_progress is None:
        return None
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        on_progress(done, total)
    return step


def score_encoded_groups(rm, groups: Sequence[Sequence[Encoded]], *, batch_size: int = 16,
                         on_progress=None, trunk=None) -> list[list[float]]:
    """Rewards of groups of sequences that answer one prompt each (a pair's two sides, or a pair plus
    its perturbed sides) -> one list of rewards per group, in order.

    Members whose prompt ids are equal form a unit whose prompt is run once (prompts are most of the
    tokens in dialogue data): Llama-style causal RM, one row per unit (``prompt_once``, with the
    ``trunk`` cache if given); other causal RMs, the prompt's KV cache copied to every response.
    Otherwise, and for members whose prompt was cut differently, every sequence is scored whole.
    ``on_progress(done, total)`` counts scored sequences."""
    from . import prompt_once

    if prompt_once.applies(rm):
        return prompt_once.score_groups(rm, groups, batch_size=batch_size, trunk=trunk, on_progress=on_progress)
    out = [[float("nan")] * len(g) for g in groups]
    count = _counter(sum(len(g) for g in groups), on_progress)
    units: dict[tuple, list[tuple[int, int]]] = {}
    alone: list[tuple[int, int]] = []
    for gi, group in enumerate(groups):
        for mi, e in enumerate(group):
            if rm.is_causal:
                units.setdefault((gi, e.ids[: e.response_start]), []).append((gi, mi))
            else:
                alone.append((gi, mi))
    for key, members in list(units.items()):  # a prompt nobody shares gains nothing from the cache
        if len(members) == 1:
            alone += units.pop(key)
    if alone:
        scores = score_sequences(rm, [groups[g][m].ids for g, m in alone], batch_size=batch_size, on_progress=count)
        for (g, m), s in zip(alone, scores.tolist()):
            out[g][m] = s
    if units:
        _score_shared_units(rm, groups, list(units.items()), batch_size, out, count)
    return out


@torch.inference_mode()
def _score_shared_units(rm, groups, units, batch_size: int, out: list[list[float]], count=None) -> None:
    from transformers import DynamicCache

    pad = rm.tokenizer.pad_token_id
    # Bucket by prompt length (most of the tokens) so prompts pad little; on CPU small batches cost
    # nothing in throughput, so padding is what matters.
    lengths = [len(key[1]) for key, _ in units]
    for b in length_buckets(lengths, max(1, batch_size // 4), max_tokens=8192):
        batch = [units[j] for j in b]
        p_ids, p_mask = collate([list(key[1]) for key, _ in batch], pad, "left", rm.device)  # (U, P)
        cache = DynamicCache()
        rm.token_rewards(p_ids, p_mask, past_key_values=cache)
        owner = torch.tensor([u for u, (_, members) in enumerate(batch) for _ in members], device=rm.device)  # (N,)
        cache.batch_select_indices(owner)  # (N, P): one copy of its unit's prompt per response
        members = [m for _, ms in batch for m in ms]
        r_ids, r_mask = collate([groups[g][m].ids[groups[g][m].response_start:] for g, m in members], pad, "right",
                                rm.device)  # (N, R)
        full_mask = torch.cat([p_mask[owner], r_mask], dim=1)  # (N, P+R)
        rewards = rm.token_rewards(r_ids, full_mask, past_key_values=cache)  # (N, R)
        last = rewards.gather(1, (r_mask.sum(-1) - 1)[:, None]).squeeze(1).float().cpu().tolist()
        for (g, m), s in zip(members, last):
            out[g][m] = s
        if count:
            count(len(members))


@dataclass
class RewardTrace:
    """Partial rewards of a response, token by token."""

    token_ids: list[int]
    pieces: list[str]         # text of each token; "".join(pieces) == decoded response
    rewards: list[float]      # rewards[i] = r(x, y<=i)
    prompt_truncated: bool
    slow_path: bool           # True when the RM is not causal and prefixes were scored one by one

    @property
    def final(self) -> float:
        return self.rewards[-1]


def token_pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """Text added by each token (multi-byte characters land on the token that completes them)."""
    pieces, prev = [], ""
    for i in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:i])
        if text.endswith("\ufffd"):  # incomplete UTF-8 sequence: wait for the next byte
            pieces.append("")
            continue
        pieces.append(text[len(prev):])
        prev = text
    return pieces


@torch.inference_mode()
def reward_trace(rm, prompt: Sequence[dict], response: str, *, max_length: int | None = None,
                 batch_size: int = 16) -> RewardTrace:
    """r(x, y<=i) for every response token. Causal RM: one forward pass. Otherwise (slow path):
    every prefix is a separate sequence, scored in batches of ``batch_size``."""
    enc = encode(rm.tokenizer, prompt, response, max_length=max_length or rm.spec.max_length,
                 use_chat_template=rm.spec.use_chat_template)
    resp_ids = list(enc.ids[enc.response_start:])
    if rm.is_causal:
        ids = torch.tensor([enc.ids], device=rm.device)
        rewards = rm.token_rewards(ids, torch.ones_like(ids))[0, enc.response_start:].float().cpu().tolist()
    else:
        prefixes = [enc.ids[: enc.response_start + i + 1] for i in range(len(resp_ids))]
        rewards = score_sequences(rm, prefixes, batch_size=batch_size, bucket=False).tolist()
    return RewardTrace(resp_ids, token_pieces(rm.tokenizer, resp_ids), rewards, enc.prompt_truncated, not rm.is_causal)
