"""The partial-reward proxy: how well the reward of a response so far, r(x, y<=i), predicts the reward
of the finished response, by decoding step i.

Controlled decoding steers by the partial reward of every candidate prefix. That is only a sound
guide if the partial reward at step i already says something about where the finished response will
land; the seed leaves this open. Over all decoded variants, this module correlates the running reward
after i tokens (a variant's stored trace) with its final reward (``r_variant``: the fresh score of its
finished text), step by step, Pearson and Spearman, with the number of variants that reached step i.
A variant that ended before step i takes no part there (carrying its final reward forward would
correlate it with itself). A step with fewer than ``min_n`` variants gets no correlation: its n
still shows, and ``enough`` is False.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

MIN_VARIANTS = 5     # fewer variants at a step than this: no correlation is drawn there (a few points give any r)
COLUMNS = ["step", "n", "pearson", "spearman", "enough"]


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r of two equal-length sequences; NaN with fewer than 2 points or a constant side."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's r of the ranks (ties share their average rank)."""
    return pearson(pd.Series(x, dtype="float64").rank().to_numpy(), pd.Series(y, dtype="float64").rank().to_numpy())


def proxy_by_step(traces: Sequence[Sequence[float]], finals: Sequence[float], *, min_n: int = MIN_VARIANTS) -> pd.DataFrame:
    """Correlation of the partial reward at each step with the final reward.

    ``traces``: per variant, its running reward after 1, 2, ... tokens (``trace[i - 1]`` is r(x, y<=i));
    ``finals``: per variant, the reward of its finished response. Variants with a NaN final, and NaN
    trace entries, are left out. -> one row per step 1..longest trace: step, n (variants with a
    partial reward there), pearson, spearman (NaN where n < ``min_n``), enough (n >= ``min_n``)."""
    if len(traces) != len(finals):
        raise ValueError(f"{len(traces)} traces for {len(finals)} final rewards; give one final reward per trace")
    if min_n < 2:
        raise ValueError(f"min_n={min_n}: a correlation needs at least 2 variants per step; use min_n >= 2")
    by_step: dict[int, tuple[list[float], list[float]]] = {}
    for trace, final in zip(traces, finals):
        if final is None or final != final:
            continue
        for i, partial in enumerate(trace, start=1):
            if partial is None or partial != partial:
                continue
            xs, ys = by_step.setdefault(i, ([], []))
            xs.append(float(partial))
            ys.append(float(final))
    rows = []
    for step in range(1, max(by_step, default=0) + 1):
        xs, ys = by_step.get(step, ([], []))
        enough = len(xs) >= min_n
        rows.append({"step": step, "n": len(xs), "pearson": pearson(xs, ys) if enough else float("nan"),
                     "spearman": spearman(xs, ys) if enough else float("nan"), "enough": enough})
    return pd.DataFrame(rows, columns=COLUMNS)


def token_trace(trace: Sequence[float], ends_in_eos: bool) -> list[float]:
    """A stored trace without its EOS step: choosing EOS adds no token, and its running reward repeats
    the last token's, which would count the finished response once more at the step after it."""
    return list(trace[:-1]) if ends_in_eos and len(trace) else list(trace)


def partial_reward_proxy(store, directions: Sequence[str] | None = None, *, min_n: int = MIN_VARIANTS) -> pd.DataFrame:
    """:func:`proxy_by_step` over every decoded variant in ``store`` (``directions``: only those, e.g.
    ("lower",); default: both decoding directions)."""
    rows = store.variant_traces(directions) if directions is not None else store.variant_traces()
    traces = [token_trace(t, bool(eos)) for t, eos in zip(rows["trace"], rows["ends_in_eos"])]
    return proxy_by_step(traces, [float(x) if x is not None else float("nan") for x in rows["r_variant"]], min_n=min_n)
