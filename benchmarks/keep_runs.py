"""Keep the finished parts of HH runs in the repository, and put them back on a new machine.

    .venv/bin/python benchmarks/keep_runs.py keep reform_hh/pipeline-p5 advrm_hh/rounds-plan2   # out/ -> checkpoints/
    .venv/bin/python benchmarks/keep_runs.py restore                                           # checkpoints/ -> out/

`benchmarks/out/` does not outlive a machine (benchmarks/checkpoints/README.md). ``keep`` copies a run directory of
`out/` into `checkpoints/` (same relative path): all of it when it succeeded; otherwise (a staged run: pipeline,
adv-rounds, compare) its top-level files and each stage that succeeded, so that the plan command, run again, reuses
those stages and runs only the rest. Left out: resume state (a killed stage starts over), a finetune=top RM's layers (too big), trunk
caches (rebuilt by the first job that reads the texts), best-of-N's shared samples with their hidden states (seeded:
drawn again, the same, by the next bon stage that needs them) and unfinished stages. A JSONL file over 1 MB is kept gzipped.

``restore`` copies everything kept back into `out/` without overwriting a file that is there, and un-gzips what
``keep`` gzipped. The paths inside the kept files are absolute, as on the machine that made them.
"""
from __future__ import annotations

import argparse
import gzip
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from reform_engine.runs import run_state  # noqa: E402

OUT, KEPT = HERE / "out", HERE / "checkpoints"
LEFT_OUT = {"rl_state.pt", "resume.pt", "decoded.journal.jsonl", "trunk_cache",  # resume state and caches; best-of-N's
            "bon_samples",  # samples with the hidden states the RMs read (~250 MB), drawn again when a bon stage runs
            "top_layers.safetensors"}  # a finetune=top RM's trained layers (113 MB for 8 SmolLM2 layers): a kept crossval
                                       # run of such a recipe keeps the per-pair held-out wins it is compared by, not its RMs
GZIP_OVER = 1 << 20


def succeeded(run_dir: Path) -> bool:
    try:
        return run_state(run_dir) == "succeeded"
    except (OSError, ValueError):  # an unreadable status: not a finished run
        return False


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".jsonl" and src.stat().st_size > GZIP_OVER:
        with open(src, "rb") as fin, open(dst.with_name(dst.name + ".gz"), "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename="") as fout:  # same bytes each time
            shutil.copyfileobj(fin, fout)
    else:
        shutil.copy2(src, dst)


def _copy_tree(src: Path, dst: Path) -> int:
    n = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_file() and not LEFT_OUT.intersection(rel.parts):
            _copy_file(path, dst / rel)
            n += 1
    return n


def keep(run: str, out: Path = OUT, kept: Path = KEPT) -> list[str]:
    """Copy the finished parts of ``out/run`` to ``kept/run`` -> what was kept (stage names, or the run's own name)."""
    src, dst = out / run, kept / run
    if not src.is_dir():
        raise SystemExit(f"no run directory {src}")
    if succeeded(src):  # a finished job, or a staged run with every stage done: all of it
        _copy_tree(src, dst)
        return [run]
    done = [d for d in sorted(src.iterdir()) if d.is_dir() and d.name not in LEFT_OUT and succeeded(d)]
    if not done:  # an unfinished job, or a staged run without a finished stage: nothing worth keeping
        return []
    for path in src.iterdir():  # a staged run not finished: its own files (config, log, report, pairs it wrote) ...
        if path.is_file() and path.name not in LEFT_OUT:
            _copy_file(path, dst / path.name)
    for stage in done:  # ... and each stage that succeeded
        _copy_tree(stage, dst / stage.name)
    return [d.name for d in done]


def restore(out: Path = OUT, kept: Path = KEPT) -> int:
    """Copy ``kept/`` into ``out/`` without overwriting, un-gzipping the gzipped JSONL -> the number of files written."""
    n = 0
    for path in sorted(kept.rglob("*")):
        if not path.is_file() or path.parent == kept:  # the folder's own README
            continue
        rel = path.relative_to(kept)
        target = out / rel
        if path.name.endswith(".jsonl.gz"):
            target = target.with_name(target.name[:-3])
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.name != path.name:
            with gzip.open(path, "rb") as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            shutil.copy2(path, target)
        n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keep", help="copy finished runs or stages from out/ into checkpoints/")
    k.add_argument("runs", nargs="+", help="run directories relative to benchmarks/out/, e.g. reform_hh/pipeline-p5")
    sub.add_parser("restore", help="copy checkpoints/ into out/, never overwriting")
    args = ap.parse_args(argv)
    if args.command == "keep":
        for run in args.runs:
            print(f"{run}: kept {', '.join(keep(run)) or 'nothing (not finished)'}")
    else:
        print(f"restored {restore()} files into {OUT}")


if __name__ == "__main__":
    sys.exit(main())
