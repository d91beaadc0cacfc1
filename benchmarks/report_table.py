"""One report per run, as the Markdown table benchmarks/RESULTS.md carries (reports.arm_table, arm_markdown).

    .venv/bin/python benchmarks/report_table.py RUN_DIR [RUN_DIR ...] [--bon BON_RUN_DIR ...]

RUN_DIR: a finished pipeline, retrain or adv-rounds run (its report.json; a pipeline's own bon_<arm>
stages are read from it); --bon: finished best-of-n runs, each shown on the arm whose checkpoint is its
RM B (with RM A the run's base). Reads files only: no model is loaded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from reform_engine.reports import (arm_markdown, arm_table, best_of_n_result, variants_markdown, variants_table,  # noqa: E402
                                   versus_markdown, versus_table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories holding a report.json")
    parser.add_argument("--bon", nargs="*", default=[], help="best-of-n run directories")
    args = parser.parse_args()
    bons = [r for r in (best_of_n_result(d) for d in args.bon) if r is not None]
    missing = [d for d in args.bon if best_of_n_result(d) is None]
    if missing:
        sys.exit(f"no finished best-of-n result (metrics.json) in {missing}")
    tables = [arm_table(d, bons) for d in args.runs]
    empty = [d for d, t in zip(args.runs, tables) if t.empty]
    if empty:
        sys.exit(f"no report.json with models in {empty}: give finished pipeline, retrain or adv-rounds runs")
    print(arm_markdown(pd.concat(tables, ignore_index=True)), end="")
    versus = [versus_table(d).assign(run=Path(d).name) for d in args.runs]
    if any(not t.empty for t in versus):  # the reform arm against each ablation arm, paired on the same pairs
        print("\n" + versus_markdown(pd.concat([t for t in versus if not t.empty], ignore_index=True)), end="")
    decoded = pd.concat([variants_table(d) for d in args.runs], ignore_index=True)
    if not decoded.empty:  # what the decoding found per selection of training pairs
        print("\n" + variants_markdown(decoded), end="")


if __name__ == "__main__":
    main()
