"""A linear probe on frozen features: the reference a trained reward model has to beat.

The backbone is left as it is; each response (with its prompt, encoded and cut exactly as scoring does)
becomes the backbone's last hidden state at its last token. A logistic regression on the difference of
a pair's two feature vectors, standardized with the training pairs' statistics and fitted with an L2
penalty, then predicts which side is chosen. It has no bias and is fitted on both orders of every pair,
so it cannot prefer a side by position. An RM recipe that does not beat this probe has learned little
that the frozen model did not already know.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .data import PreferencePair
from .reward_model import last_token_index
from .scoring import collate, encode_pairs, length_buckets


@dataclass
class PairFeatures:
    chosen: torch.Tensor        # (N, H) over the pairs that fit
    rejected: torch.Tensor      # (N, H)
    kept: tuple[int, ...]       # input positions of those pairs (the others' responses do not fit max_length)


@torch.no_grad()
def pair_features(rm, pairs: Sequence[PreferencePair], *, max_length: int | None = None, batch_size: int = 16,
                  on_progress=None) -> PairFeatures:
    """The frozen backbone of causal RM ``rm`` (its head unused) -> each side's last-token hidden state,
    float32 on the CPU. ``on_progress(done, total)`` counts sequences."""
    encoded = encode_pairs(rm, pairs, max_length=max_length, skip_too_long=True)
    kept = tuple(i for i, e in enumerate(encoded) if e is not None)
    seqs = [e.ids for i in kept for e in encoded[i]]
    out = torch.empty(len(seqs), rm.backbone.config.hidden_size, dtype=torch.float32)
    done = 0
    for batch in length_buckets([len(s) for s in seqs], batch_size, 8192):
        ids, mask = collate([seqs[i] for i in batch], rm.tokenizer.pad_token_id, rm.tokenizer.padding_side, rm.device)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = rm.backbone(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        out[batch] = hidden.gather(1, last_token_index(mask)[:, None, None].expand(-1, 1, hidden.shape[-1])).squeeze(1).float().cpu()
        done += len(batch)
        if on_progress:
            on_progress(done, len(seqs))
    return PairFeatures(out[0::2].clone(), out[1::2].clone(), kept)


@dataclass
class LinearProbe:
    weight: torch.Tensor        # (H,) on standardized feature differences
    mean: torch.Tensor          # (H,) of the training features, both sides pooled
    scale: torch.Tensor         # (H,)

    def margins(self, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
        """(N, H), (N, H) -> (N,) probe score of chosen minus that of rejected (> 0: chosen preferred)."""
        return ((chosen - self.mean) / self.scale - (rejected - self.mean) / self.scale) @ self.weight


def fit_probe(chosen: torch.Tensor, rejected: torch.Tensor, *, l2: float = 1.0, max_iter: int = 200) -> LinearProbe:
    """Logistic regression on feature differences of training pairs (both orders), L2 penalty ``l2`` on
    the mean loss times 1/N, fitted to convergence by L-BFGS (deterministic: no sampling)."""
    if len(chosen) < 2:
        raise ValueError(f"a probe needs at least 2 training pairs, got {len(chosen)}")
    if l2 <= 0:
        raise ValueError(f"l2={l2} must be > 0 (the features outnumber the pairs)")
    pooled = torch.cat([chosen, rejected]).double()
    mean, scale = pooled.mean(0), pooled.std(0).clamp(min=1e-6)
    diff = ((chosen.double() - mean) / scale) - ((rejected.double() - mean) / scale)
    x = torch.cat([diff, -diff])
    y = torch.cat([torch.ones(len(diff)), torch.zeros(len(diff))]).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + l2 * (w @ w) / len(diff)
        loss.backward()
        return loss

    opt.step(closure)
    return LinearProbe(w.detach().float(), mean.float(), scale.float())


def probe_wins(probe: LinearProbe, chosen: torch.Tensor, rejected: torch.Tensor) -> np.ndarray:
    """(N,) per pair 1 when the probe prefers chosen, 0.5 on a tie, else 0 (evaluation.pair_wins)."""
    from .evaluation import pair_wins

    margins = probe.margins(chosen, rejected)
    return pair_wins(margins, torch.zeros_like(margins))
