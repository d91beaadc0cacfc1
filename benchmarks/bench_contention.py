"""Bar: with the app scoring pairs in-process while a training job runs, the total throughput is
>= 0.8x that of running the two one after the other (issue 11, item 4). Run it on an idle machine:

    .venv/bin/python benchmarks/bench_contention.py [--pairs 32] [--train-steps 6]
    .venv/bin/python benchmarks/bench_contention.py --quick     # tiny random models: checks the script runs

Work is measured as rates. The app side scores pairs with an RM on the default SmolLM2 backbone
(untrained head: the forward costs the same) in a thread of this process, as the Home and Influential
pages do; the job side is a real ``train-rm`` process started by ``jobs.start_job`` (LoRA on the
default SmolLM2, the Home page's settings), whose rate comes from the step counts and times it writes
to status.json. One job process serves every phase:

    alone             scoring with all the app's threads, no job; the job training with no scoring
                      (measured before and after the phases below, averaged)
    full threads      scoring beside the job with the app's default threads (the old behaviour)
    capped            scoring beside the job, its thread first capped by ``jobs.cap_app_threads``
                      (1 thread on 2 cores while a job runs), the job keeping its threads
    shared            what the pages do now (pages/_cpu.cpu_work): capped as above, and the scoring
                      claimed (``cpu_share.claim``), so the job's ThreadGovernor drops it to the
                      cores left while the app scores

Throughput together, relative to one after the other, is the sum of each side's share of its alone
rate: score_rate / score_rate_alone + train_rate / train_rate_alone. 1.0 is as good as taking turns;
running both in turn is 1.0 by definition, so the bar is met when the shared mode reaches 0.8. Each
"together" phase scores the pairs again and again until the job has done ``--train-steps`` steps in
it, so both rates cover the same window.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from _paths import HH_DEV_PATH, bench_data  # noqa: E402
from reform_engine.cpu_share import CPU_DIR_ENV, claim  # noqa: E402
from reform_engine.data import load_preferences, select_rows, write_jsonl  # noqa: E402
from reform_engine.jobs import cancel_job, cap_app_threads, refresh_job, start_job  # noqa: E402
from reform_engine.models import DEFAULT_MODEL  # noqa: E402
from reform_engine.reward_model import RewardModelSpec, build_reward_model  # noqa: E402
from reform_engine.runs import read_json  # noqa: E402
from reform_engine.runtime import set_cpu_threads  # noqa: E402
from reform_engine.scoring import score_pairs  # noqa: E402
from reform_engine.store import Store  # noqa: E402
from reform_engine.tiny import save_tiny_model  # noqa: E402

POLL = 0.05          # seconds between looks at the job's status.json
HANG_GUARD = 3600    # seconds: only so a broken job cannot hang the benchmark


class JobWatch:
    """Follows the job's (step, training seconds) from status.json in a thread, so a window of the
    job's own clock can be cut out afterwards."""

    def __init__(self, run_dir: Path):
        self.status_path, self.points, self._stop = run_dir / "status.json", [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status = read_json(self.status_path, {}) or {}
            except (OSError, ValueError):
                status = {}
            step, seconds = status.get("step"), status.get("seconds")
            if isinstance(step, int) and isinstance(seconds, (int, float)) and (not self.points or step > self.points[-1][0]):
                self.points.append((step, float(seconds), time.monotonic()))
            time.sleep(POLL)

    def step(self) -> int:
        return self.points[-1][0] if self.points else 0

    def rate(self, start: float, end: float) -> tuple[float, int]:
        """Steps per second of training time between two wall-clock instants -> (rate, steps in it)."""
        inside = [p for p in self.points if start <= p[2] <= end]
        if len(inside) < 2:
            raise RuntimeError("fewer than two training steps in the window: raise --train-steps or --pairs")
        (s0, t0, _), (s1, t1, _) = inside[0], inside[-1]
        return (s1 - s0) / (t1 - t0), s1 - s0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def wait_steps(watch: JobWatch, n: int) -> None:
    target, deadline = watch.step() + n, time.monotonic() + HANG_GUARD
    while watch.step() < target:
        if time.monotonic() > deadline:
            raise RuntimeError("the job stopped advancing")
        time.sleep(POLL)


def score_in_thread(rm, pairs, threads, until, claimed: bool = False) -> tuple[float, int]:
    """Score ``pairs`` in a fresh thread (as a page's background task does), again and again while
    ``until(passes)`` says so (at least once) -> (pairs per second, passes). ``threads()`` runs first
    in that thread and sets its torch threads (torch keeps a count per thread); ``claimed``: the work
    runs under a CPU claim of those threads, as the pages' does."""
    out = {}

    def work():
        threads()
        passes, start = 0, time.perf_counter()
        with claim(torch.get_num_threads()) if claimed else contextlib.nullcontext():
            while True:
                score_pairs(rm, pairs)
                passes += 1
                if not until(passes):
                    break
        out["rate"], out["passes"] = passes * len(pairs) / (time.perf_counter() - start), passes

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return out["rate"], out["passes"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=32, help="pairs per scoring pass (HH harmless dev rows 1500:, else the demo set)")
    ap.add_argument("--train-steps", type=int, default=6, help="training steps each phase spans")
    ap.add_argument("--batch-size", type=int, default=8, help="the job's pairs per step")
    ap.add_argument("--quick", action="store_true", help="tiny random models and few steps: only checks that the script runs")
    args = ap.parse_args()
    # SIGTERM (kill, timeout) must still run the finally below, which cancels the training job: that job
    # runs in its own session with a huge max_steps and would otherwise keep both cores busy for hours.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="bench-contention-"))
    os.environ[CPU_DIR_ENV] = str(work / "claims")   # the job (started below) inherits it: only our claims count
    source = bench_data()
    pairs = load_preferences(source, skip_invalid=True).pairs
    train_rows = "0:1000" if source == HH_DEV_PATH else ""
    app_pairs = select_rows(pairs, "1500:" if source == HH_DEV_PATH else "")[: args.pairs]
    model, train_data = DEFAULT_MODEL, str(source)
    if args.quick:
        model = str(save_tiny_model(work / "tiny"))
        app_pairs, train_rows = app_pairs[:8], ""
        train_data = str(work / "train.jsonl")
        write_jsonl(train_data, [p.to_trl() for p in pairs[:64]])
        args.train_steps = min(args.train_steps, 3)
    full = torch.get_num_threads()
    rm = build_reward_model(RewardModelSpec(base_model=model, finetune="head", max_length=1024 if args.quick else 320),
                            device="cpu").eval()  # the byte tokenizer of --quick makes every text long
    set_cpu_threads(full)
    score_pairs(rm, app_pairs[:2])  # warm-up

    score_alone, _ = score_in_thread(rm, app_pairs, lambda: set_cpu_threads(full), until=lambda passes: passes < 2)
    store = Store(work / "project" / "reform.duckdb")
    job_id = start_job(store, "train-rm", {"data": train_data, "train_rows": train_rows, "model": {"base_model": model},
                                          "batch_size": args.batch_size, "max_steps": 1_000_000, "runtime": {"device": "cpu"}})
    run_dir = Path(store.get_job(job_id)["run_dir"])
    watch = JobWatch(run_dir)
    threads_seen: list[int] = []

    def train_alone() -> float:
        start = time.monotonic()
        wait_steps(watch, args.train_steps)
        return watch.rate(start, time.monotonic())[0]

    def together(threads, claimed: bool = False) -> dict:
        target = watch.step() + args.train_steps
        start = time.monotonic()
        score_rate, passes = score_in_thread(rm, app_pairs, threads, until=lambda passes: watch.step() < target,
                                             claimed=claimed)
        train_rate, steps = watch.rate(start, time.monotonic())
        return {"score_pairs_per_s": score_rate, "train_steps_per_s": train_rate, "passes": passes, "steps": steps,
                "app_threads": threads_seen[-1]}

    try:
        wait_steps(watch, 2)  # loaded and past the first, slower steps

        def full_threads() -> None:
            set_cpu_threads(full)
            threads_seen.append(torch.get_num_threads())

        def capped() -> None:
            cap_app_threads(store, full)
            threads_seen.append(torch.get_num_threads())

        train_before = train_alone()
        modes = {"full_threads": together(full_threads), "capped": together(capped),
                 "shared": together(capped, claimed=True)}
        train_after = train_alone()
    finally:
        watch.stop()
        cancel_job(store, job_id, grace=5.0)
        refresh_job(store, job_id)
        shutil.rmtree(work, ignore_errors=True)
    train_rate = (train_before + train_after) / 2
    for m in modes.values():
        m["throughput_vs_sequential"] = round(m["score_pairs_per_s"] / score_alone + m["train_steps_per_s"] / train_rate, 3)
        m["train_s_per_step"] = round(1 / m.pop("train_steps_per_s"), 2)
        m["score_pairs_per_s"] = round(m["score_pairs_per_s"], 2)
    print(json.dumps({
        "data": source.name, "model": "tiny (--quick)" if args.quick else model, "app_pairs": len(app_pairs),
        "job": {"kind": "train-rm", "finetune": "lora", "batch_size": args.batch_size},
        "app_default_threads": full,
        "alone": {"score_pairs_per_s": round(score_alone, 2), "train_s_per_step": round(1 / train_rate, 2),
                  "train_s_per_step_before_after": [round(1 / train_before, 2), round(1 / train_after, 2)]},
        "together": modes, "sequential_throughput": 1.0, "bar": 0.8,
        "bar_met_shared": modes["shared"]["throughput_vs_sequential"] >= 0.8}, indent=2))


if __name__ == "__main__":
    main()
