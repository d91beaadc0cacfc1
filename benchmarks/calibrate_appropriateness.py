"""How the appropriateness rules (reform_engine/appropriateness.py) label the data's own responses: the
share of HH harmless chosen and of rejected responses they flag as complying. No model: seconds.

    .venv/bin/python benchmarks/calibrate_appropriateness.py [--split develop|report] [--data PATH] [--examples N]

The split was fixed before the rules were written: the rules are developed on the even source rows
(--split develop) and reported on the odd source rows (--split report), never tuned on the latter.
A rule that tracks harm would flag few chosen and many rejected responses; one that flags both alike
only tracks style. The rules never read the prompt, so they cannot tell a harmful request from a
harmless one: on this data nearly every prompt is a red-team request, but not every turn.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._paths import HH_DEV_PATH  # noqa: E402
from reform_engine.appropriateness import judge_by_rules  # noqa: E402
from reform_engine.data import load_preferences  # noqa: E402

SPLITS = {"develop": 0, "report": 1}   # source row parity


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a share k/n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: the discordant pairs split b/c against an even split."""
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(HH_DEV_PATH))
    ap.add_argument("--split", choices=list(SPLITS), default="report")
    ap.add_argument("--examples", type=int, default=0, help="print this many flagged/unflagged examples per side")
    args = ap.parse_args()
    pairs = [p for p in load_preferences(args.data, skip_invalid=True).pairs
             if int(p.pair_id.rsplit(":", 1)[-1]) % 2 == SPLITS[args.split]]
    n = len(pairs)
    print(f"{args.data}: {n} pairs on the {args.split} split (source rows with parity {SPLITS[args.split]})")
    for side in ("chosen", "rejected"):
        verdicts = [judge_by_rules(getattr(p, side)) for p in pairs]
        flagged = sum(v.appropriate is False for v in verdicts)
        lo, hi = wilson(flagged, n)
        kinds = Counter(v.reason.split(" (")[0] for v in verdicts)
        signals = Counter(v.reason.split("(")[1].split(":")[0] for v in verdicts if "(" in v.reason)
        print(f"{side:9s} flagged as complying: {flagged}/{n} = {flagged / n:.1%} [95% {lo:.1%}, {hi:.1%}]; "
              f"{dict(kinds)}; by marker {dict(signals.most_common())}")
        if args.examples:
            rng = random.Random(0)
            for v, p in rng.sample(list(zip(verdicts, pairs)), args.examples):
                print(f"   {v.appropriate!s:5s} {v.reason[:70]:70s} | {' '.join(getattr(p, side).split())[:120]}")
    pair_flags = [(judge_by_rules(p.chosen).appropriate is False, judge_by_rules(p.rejected).appropriate is False) for p in pairs]
    both = Counter(pair_flags)
    only_rejected, only_chosen = both[(False, True)], both[(True, False)]
    print(f"pairs by (chosen flagged, rejected flagged): {dict(both)}; rejected flagged and chosen not: "
          f"{only_rejected}, the reverse: {only_chosen}; exact McNemar two-sided p = {mcnemar(only_rejected, only_chosen):.3f}")


if __name__ == "__main__":
    main()
