"""A candidate RM recipe against the default, both cross-validated on the same folds (crossval.compare_runs).

    .venv/bin/python benchmarks/compare_recipes.py CANDIDATE_RUN DEFAULT_RUN [CANDIDATE_RUN ...]

Each RUN is a crossval run directory. Prints one Markdown row per candidate: its pooled accuracy, the default's,
the paired difference with its 95% bootstrap interval, the pairs both scored, and the settings that differ.
Reads files only: no model is loaded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reform_engine.crossval import compare_runs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidate", help="a crossval run directory")
    parser.add_argument("default", help="the default recipe's crossval run directory")
    parser.add_argument("more", nargs="*", help="further candidates against the same default")
    args = parser.parse_args()
    print("| candidate | changed | candidate acc. [95% CI] | default acc. | candidate − default [paired 95% CI] | pairs | all folds |")
    print("|---|---|---|---|---|---|---|")
    for run in [args.candidate, *args.more]:
        try:
            r = compare_runs(run, args.default)
        except ValueError as exc:
            sys.exit(f"{run}: {exc}")
        changed = "; ".join(f"{k.removeprefix('recipe.')} {a} → {b}" for k, (a, b) in r["changed"].items()) or "nothing"
        c, d, diff = r["candidate"], r["default"], r["difference"]
        print(f"| {Path(run).name} | {changed} | {c.estimate:.1%} [{c.low:.1%}, {c.high:.1%}] | {d.estimate:.1%} | "
              f"{diff.estimate * 100:+.1f} [{diff.low * 100:+.1f}, {diff.high * 100:+.1f}] | {r['n']} | "
              f"{'yes' if r['complete'] else 'no'} |")


if __name__ == "__main__":
    main()
