"""Bars (issue 13): the REFORM loop's stages before and after the trunk cache, side by side in one run.

    .venv/bin/python benchmarks/bench_trunk_cache.py                      # 1,500 training pairs, all held-out rows
    .venv/bin/python benchmarks/bench_trunk_cache.py --quick --threads 1  # 64 pairs: proves the script, not the bars
    .venv/bin/python benchmarks/bench_trunk_cache.py --scaling            # 250 / 500 / 1,000 / 1,500 training pairs
    ... --resume     # after a kill (a session's end): the stages whose before and after both finished are kept

--scaling runs the smaller sizes *after* only (how the new path's cost grows) and the largest before and
after; each size lives in benchmarks/out/trunk_cache/n<N>/, so a size the full run has finished (1,500) is
read back, not run again, and vice versa.

Every stage is the engine's own job (train_reward_model, find_influential, evaluate_robustness), run
twice in turn: *before* (trunk_cache='off' and the previous scoring path, the prompt's KV cache
copied to each response) and *after* (the defaults: prompt-once rows and one trunk cache shared by
the stages, as the pipeline does). Stages, as in the pipeline with from-scratch retraining:

    base          train on HH rows 0..N (SmolLM2, LoRA top 8 of 30, max length 320, 2 epochs)
    influence     score every training pair right after training           bar (a): >= 3x
    robustness    the base on the held-out rows, clean + 9 perturbations   bar (c): >= 1.5x
    retrain_k     from scratch, the base's recipe, + --new-pairs pairs     bar (b): >= 1.8x, loss curve <= 1e-4
    robustness_k  each retrained arm on the same held-out rows

New pairs keep a training prompt and chosen response and get a new rejected response (a
perturbation), as REFORM's inversions do. Each stage runs in a fresh process (as the app's jobs do)
and reports its wall and CPU seconds and that process's peak RSS; the checks print the largest score
and loss-curve differences between before and after. Results go to benchmarks/out/trunk_cache*.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import pickle
import resource
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from _paths import HH_DEV_PATH  # noqa: E402
from reform_engine import prompt_once  # noqa: E402
from reform_engine.data import load_preferences, select_rows, write_jsonl  # noqa: E402
from reform_engine.influence import InfluenceConfig, find_influential  # noqa: E402
from reform_engine.models import DEFAULT_MODEL  # noqa: E402
from reform_engine.reward_model import RewardModelSpec  # noqa: E402
from reform_engine.robustness import RobustnessConfig, evaluate_robustness, perturb_pairs  # noqa: E402
from reform_engine.runtime import Runtime  # noqa: E402
from reform_engine.training import TrainRewardConfig, train_reward_model  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
ARM_PERTURBATIONS = ("verbosity", "markdown", "prompt_echo")  # how each arm's new rejected responses are made


@contextmanager
def todays_scoring(before: bool):
    """Before: the scoring path of the previous default (prompt KV cache copied to each response),
    which the engine keeps for causal RMs that prompt_once does not run."""
    saved = prompt_once.applies
    if before:
        prompt_once.applies = lambda rm: False
    try:
        yield
    finally:
        prompt_once.applies = saved


def _stage_process(job, config, run_dir, before: bool, threads: int):
    """In a fresh process: the job, its wall and CPU seconds, and the process's peak RSS."""
    if threads:
        torch.set_num_threads(threads)
    with todays_scoring(before):
        wall, cpu = time.perf_counter(), time.process_time()
        result = job(config, run_dir)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return result, {"seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "peak_rss_gb": round(peak / 2**30, 2)}


def timed(job, config, run_dir, before: bool, threads: int):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_stage_process, (job, config, run_dir, before, threads))


def new_pairs_file(data: str, train_rows: str, n: int, arm: int, path: Path) -> str:
    """n pairs on training prompts with a perturbed rejected response (another perturbation per arm)."""
    pairs = select_rows(load_preferences(data, skip_invalid=True).pairs, train_rows)
    chosen = pairs[arm * n: (arm + 1) * n]
    made = perturb_pairs(chosen, ARM_PERTURBATIONS[arm % len(ARM_PERTURBATIONS)], seed=arm)
    write_jsonl(path, [p.to_trl() for p in made])
    return str(path)


def scored_rewards(path: str) -> torch.Tensor:
    return torch.tensor([[r["r_chosen"], r["r_rejected"]] for r in map(json.loads, open(path))])


FLAGS = ("data", "new_pairs", "arms", "held_out", "epochs", "threads")   # what a size's finished stages depend on


def _same_flags(out: Path, args, resume: bool) -> None:
    """A size's directory holds the stages of one set of flags: a resume with others would mix them."""
    flags = {k: getattr(args, k) for k in FLAGS}
    path = out / "flags.json"
    if resume and path.is_file() and json.loads(path.read_text()) != flags:
        sys.exit(f"{out} holds stages run with {path.read_text().strip()}, not {json.dumps(flags)}: run with those flags, "
                 "or without --resume to start this size over")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(flags))


def run_loop(n: int, args, out: Path, with_before: bool = True) -> dict:
    """Every stage at n training pairs, before then after (``with_before``; else after only); -> stage table
    and, with before, the checks."""
    whens = {"both": ("before", "after"), "before": ("before",), "after": ("after",)}[args.side]
    whens = whens if with_before else tuple(w for w in whens if w == "after")
    train_rows, held_out = f"0:{n}", f"1500:{1500 + args.held_out}" if args.held_out else "1500:"
    recipe = dict(data=args.data, train_rows=train_rows, model=RewardModelSpec(base_model=DEFAULT_MODEL, lora_layers=8, max_length=320),
                  batch_size=8, lr=2e-4, epochs=args.epochs)
    caches = out / "after" / "trunk_cache"
    finished: list[str] = []  # stages done, newest last: their caches are read by the later stages

    def runtime(when: str, name: str) -> Runtime:
        """Before: no cache. After: this stage writes its own directory and reads every earlier stage's,
        which together are the one cache the pipeline shares (so a stage re-run after a kill starts from
        exactly what its first attempt found)."""
        dirs = [caches / name] + [caches / done for done in reversed(finished)]
        return Runtime(device="cpu", threads=args.threads, seed=0,
                       trunk_cache="off" if when == "before" else ",".join(str(d) for d in dirs))
    stages, runs = {}, {"before": {}, "after": {}}

    def stage(name, job, make_config):
        """Each side of a stage is kept as it finishes (done/<name>.<side>.pkl), so a killed run, or the two sides run
        by two processes (``--side``), go on from what is kept."""
        if args.stages and name not in args.stages:
            return
        for when in whens:
            kept = out / "done" / f"{name}.{when}.pkl"
            if kept.is_file():
                runs[when][name], stages.setdefault(name, {})[when] = pickle.loads(kept.read_bytes())
                print(f"  n={n} {name:14s} {when:6s} done earlier {stages[name][when]}", flush=True)
                continue
            # a killed attempt leaves nothing behind
            for path in [out / when / name] + ([caches / name] if when == "after" else []):
                shutil.rmtree(path, ignore_errors=True)
            config = dataclasses.replace(make_config(when), runtime=runtime(when, name))
            result, cost = timed(job, config, out / when / name, when == "before", args.threads)
            runs[when][name] = result
            stages.setdefault(name, {})[when] = cost
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_bytes(pickle.dumps((result, cost)))
            print(f"  n={n} {name:14s} {when:6s} {cost}", flush=True)
        if {"before", "after"} <= stages[name].keys():
            b, a = stages[name]["before"], stages[name]["after"]
            stages[name]["speedup"] = round(b["seconds"] / a["seconds"], 2)
            stages[name]["cpu_speedup"] = round(b["cpu_seconds"] / a["cpu_seconds"], 2)
        finished.append(name)

    def robustness(rm_stage):
        return lambda when: RobustnessConfig(reward_model=runs[when][rm_stage].checkpoint, data=args.data, rows=held_out,
                                             max_length=1024)

    stage("base", train_reward_model, lambda when: TrainRewardConfig(**recipe))
    stage("influence", find_influential, lambda when: InfluenceConfig(
        reward_model=runs[when]["base"].checkpoint, data=args.data, rows=train_rows, max_length=1024))
    stage("robustness", evaluate_robustness, robustness("base"))
    for arm in range(args.arms):
        extra = new_pairs_file(args.data, train_rows, args.new_pairs, arm, out / f"new_pairs_{arm}.jsonl")
        stage(f"retrain_{arm}", train_reward_model,
              lambda when: TrainRewardConfig(**recipe, augment_data=extra))
        stage(f"robustness_{arm}", evaluate_robustness, robustness(f"retrain_{arm}"))

    def curve_diff(name):
        b, a = runs["before"][name].loss_curve, runs["after"][name].loss_curve
        return max(abs(x - y) for x, y in zip(b, a)) if len(a) == len(b) else float("inf")

    def robustness_same(name):
        b, a = runs["before"][name], runs["after"][name]
        return [r.perturbed_win_rate for r in b.per_perturbation] == [r.perturbed_win_rate for r in a.per_perturbation] \
            and b.clean_win_rate == a.clean_win_rate

    caches = {name: getattr(r, "trunk_cache", {}) for name, r in runs["after"].items()}
    cache_table = {k: {f: v.get(f) for f in ("hits", "misses", "bytes", "written_bytes")} for k, v in caches.items()}
    both = [name for name, s in stages.items() if "speedup" in s]   # stages with both sides: the ones checked
    loop = {w: round(sum(s[w]["seconds"] for s in stages.values() if w in s), 1) for w in whens}
    checks = {}
    for name in both:
        if name == "influence":
            influence = [scored_rewards(runs[w][name].scored_path) for w in ("before", "after")]
            ranks = [[r["rank"] for r in map(json.loads, open(runs[w][name].scored_path))] for w in ("before", "after")]
            checks.update(influence_max_reward_diff=float((influence[0] - influence[1]).abs().max()),
                          influence_same_ranks=ranks[0] == ranks[1])
        elif name.startswith("robustness"):
            checks[f"{name}_same_win_rates"] = robustness_same(name)
        else:
            checks[f"{name}_loss_curve_max_diff"] = curve_diff(name)
    whole = not args.stages and len(both) == len(stages) and len(whens) == 2   # the whole loop, both sides
    trained = runs["after"].get("base") or runs["before"].get("base")
    return {"pairs": trained.train_pairs if trained else n, "stages": stages, "checks": checks, "loop_seconds": loop,
            **({"loop_speedup": round(loop["before"] / loop["after"], 2)} if whole else {}), "trunk_cache": cache_table}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(HH_DEV_PATH))
    ap.add_argument("--pairs", type=int, default=1500, help="training rows 0..pairs")
    ap.add_argument("--new-pairs", type=int, default=50, help="pairs each retraining arm adds")
    ap.add_argument("--arms", type=int, default=2, help="from-scratch retraining arms")
    ap.add_argument("--held-out", type=int, default=0, help="held-out rows from 1500 for robustness (0 = all, 293 rows)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--quick", action="store_true", help="64 pairs, 8 new pairs, 1 arm, 12 held-out rows")
    ap.add_argument("--scaling", action="store_true", help="the loop at each of --sizes training pairs")
    ap.add_argument("--sizes", default="250,500,1000,1500")
    ap.add_argument("--side", choices=("both", "before", "after"), default="both",
                    help="run one side of each stage only (two processes can run the two sides at once; a later "
                         "call with --resume and both sides reads them back and reports the ratios)")
    ap.add_argument("--stages", default="", help="comma-separated stages to run (default: all): base, influence, "
                                                 "robustness, retrain_<arm>, robustness_<arm>")
    ap.add_argument("--resume", action="store_true", help="go on with an interrupted run of the same flags: each stage's "
                                                          "finished sides are read back, the rest run")
    args = ap.parse_args()
    args.stages = [s for s in args.stages.split(",") if s]
    if not Path(args.data).is_file():
        ap.error(f"{args.data} not found; pass --data with the HH harmless dev.jsonl.gz")
    if args.quick:
        args.pairs, args.new_pairs, args.arms, args.held_out = 64, 8, 1, 12
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")] if args.scaling else [args.pairs]
    tag = "trunk_cache" + ("_quick" if args.quick else "")   # the sizes' directories: shared by the full and scaling runs
    results = {}
    for n in sizes:
        out = OUT / tag / f"n{n}"
        if out.exists() and not args.resume:
            shutil.rmtree(out)
        _same_flags(out, args, args.resume)
        results[n] = run_loop(n, args, out, with_before=not args.scaling or n == max(sizes))
        print(json.dumps({n: results[n]}, indent=2), flush=True)
    report = {"threads": torch.get_num_threads(), "epochs": args.epochs, "new_pairs": args.new_pairs, "arms": args.arms,
              "held_out": args.held_out or "all", "results": results}
    (OUT / f"{tag}{'_scaling' if args.scaling else ''}.json").write_text(json.dumps(report, indent=2))
    print(f"\n{'pairs':>6} {'stage':14s} {'before s':>9} {'after s':>9} {'speed-up':>8} {'cpu x':>6} {'peak GB b/a':>12}")
    for n, r in results.items():
        for name, s in r["stages"].items():
            b, a = s.get("before", {}), s.get("after", {})
            print(f"{r['pairs']:>6} {name:14s} {b.get('seconds', '-'):>9} {a.get('seconds', '-'):>9} {s.get('speedup', '-'):>8} "
                  f"{s.get('cpu_speedup', '-'):>6} {b.get('peak_rss_gb', '-'):>5}/{a.get('peak_rss_gb', '-'):<5}")
        print(f"{r['pairs']:>6} {'whole loop':14s} {r['loop_seconds'].get('before', '-'):>9} {r['loop_seconds'].get('after', '-'):>9} "
              f"{r.get('loop_speedup', '-'):>8}   (variant decoding not included)")
        print(f"       checks: {r['checks']}")
    if len(results) > 1:  # linear growth keeps seconds per training pair flat across sizes
        print("\nseconds per training pair (after):")
        for name in ("base", "influence", "retrain_0"):
            print(f"  {name:10s} " + "  ".join(f"{r['pairs']}: {r['stages'][name]['after']['seconds'] / r['pairs']:.2f}"
                                              for r in results.values() if "after" in r["stages"].get(name, {})))


if __name__ == "__main__":
    main()
