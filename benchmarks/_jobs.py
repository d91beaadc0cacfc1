"""Running a fixed plan of the engine's jobs from a benchmark script: one after another, each in its own
process (so each resumes where a killed run stopped), a finished one not run again, and the last
run's per-arm table printed at the end."""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence


def plan_arguments(doc: str, out: Path, more: Callable[[argparse.ArgumentParser], None]) -> argparse.Namespace:
    """The flags every plan has (the data, its fold layout, where runs go, placement, --dry-run) and ``more``
    of the script's own -> the parsed arguments; exits with a message when the data file is missing."""
    from _paths import HH_DEV_PATH

    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--data", default=str(HH_DEV_PATH))
    ap.add_argument("--fold", type=int, default=0, help="the held-out fold: fold=K/FOLDS@FOLD_SEED, as crossval draws it")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold-seed", type=int, default=0)
    more(ap)
    ap.add_argument("--out", type=Path, default=out)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--trunk-cache", default="auto", help="auto: each run's own; or a directory shared with earlier runs of "
                                                          "the same backbone and split (e.g. the crossval run's trunk_cache)")
    ap.add_argument("--dry-run", action="store_true", help="print each job's command line and stop")
    args = ap.parse_args()
    if not Path(args.data).is_file():
        sys.exit(f"no data at {args.data}: give --data (the HH-RLHF harmless dev file)")
    return args


def run_plan(jobs: Sequence[tuple[str, object, Path]], dry_run: bool) -> None:
    """``jobs``: (job kind, config, run dir) in order. ``dry_run``: print each command line, run nothing."""
    from reform_engine.jobs import command_line
    from reform_engine.stages import finished

    for kind, config, run_dir in jobs:
        argv = command_line(kind, config, run_dir)
        done = finished(run_dir, config) is not None  # the pipeline and adv-rounds also reuse their own finished stages
        print(("done: " if done else "") + shlex.join(argv[2:]), flush=True)  # quoted: a line can be pasted back
        if not dry_run and not done:
            subprocess.run(argv, check=True)
    if not dry_run:
        from reform_engine.reports import arm_markdown, arm_table

        print(arm_markdown(arm_table(jobs[-1][2])))
