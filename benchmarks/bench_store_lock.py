"""Fairness of the project database's lock (issue 11): 4 writer processes x 200 approvals while a
reader process polls the curation queue, as a page does behind a busy job. For each waiter, the wait
is the time from asking for the store's turn to getting it (the work done in the turn not counted).

    .venv/bin/python benchmarks/bench_store_lock.py            # --writers 4 --approvals 200 --modes old,new

``old`` is the lock before issue 11 (flock polled with exponential backoff, 1 to 50 ms, copied below
verbatim) put in place of the store's ``_turn`` in every process of that run; ``new`` is the store's own
FIFO queue (reform_engine/turns.py). Both run here one after the other on fresh databases, with
automatic snapshots off so that only the lock is measured. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# --------------------------------------------------------------------------- the lock before issue 11 (store.py at 18cba1e)
_held = threading.local()


@contextmanager
def _old_turn(lock_path: Path, deadline: float, db: Path):
    import fcntl

    from reform_engine.store import _busy

    if getattr(_held, "busy", False):
        raise RuntimeError("Store calls must not nest (the outer call holds the database)")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise _busy(db) from None
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 0.05)
        _held.busy = True
        yield
    finally:
        _held.busy = False
        os.close(fd)


# --------------------------------------------------------------------------- the load

def _timed_store(path: str, mode: str, waits: list[float]):
    """A Store whose every turn records how long it waited for it."""
    import reform_engine.store as store_module
    from reform_engine.backups import BackupConfig

    base = _old_turn if mode == "old" else store_module._turn

    @contextmanager
    def timed(lock_path, deadline, db):
        asked = time.perf_counter()
        with base(lock_path, deadline, db):
            waits.append(time.perf_counter() - asked)
            yield

    store_module._turn = timed
    return store_module.Store(path, timeout=600, backup=BackupConfig(every=0, on_start=False))


def _writer(path: str, mode: str, approvals: int, seed: int, out: str, start) -> None:
    waits: list[float] = []
    store = _timed_store(path, mode, waits)
    ids = [int(i) for i in store.list_variants()["id"]]
    waits.clear()
    start.wait()
    rng = random.Random(seed)
    t0 = time.perf_counter()
    for i in range(approvals):
        store.decide(rng.choice(ids), "approve" if i % 3 else "reject", note=f"writer {seed} #{i}", reviewer=f"w{seed}")
    Path(out).write_text(json.dumps({"waits": waits, "seconds": time.perf_counter() - t0}))


def _reader(path: str, mode: str, out: str, start, stop, pause: float) -> None:
    waits: list[float] = []
    store = _timed_store(path, mode, waits)
    waits.clear()
    start.wait()
    polls, t0 = 0, time.perf_counter()
    while not stop.is_set():
        store.list_variants()  # what the Curation page and the sidebar read on every run
        polls += 1
        if pause:
            stop.wait(pause)  # a live panel redraws every so often, it does not hammer
    Path(out).write_text(json.dumps({"waits": waits, "polls": polls, "seconds": time.perf_counter() - t0}))


def _stats(waits: list[float]) -> dict:
    s = sorted(waits)
    if not s:
        return {"n": 0}
    return {"n": len(s), "p50": statistics.median(s), "p95": s[min(len(s) - 1, int(0.95 * len(s)))], "max": s[-1]}


def run(mode: str, writers: int, approvals: int, variants: int, pause: float) -> dict:
    from reform_engine.backups import BackupConfig
    from reform_engine.store import Store

    folder = Path(tempfile.mkdtemp(prefix=f"bench-lock-{mode}-"))
    db = folder / "reform.duckdb"
    records = [{"pair_id": f"p{i}", "direction": "lower", "prompt": [{"role": "user", "content": f"question {i}"}],
                "original_chosen": f"good answer {i}", "original_rejected": f"bad answer {i}", "text": f"variant {i}",
                "is_inversion": True} for i in range(variants)]
    Store(db, backup=BackupConfig(every=0, on_start=False)).add_variants(records)
    ctx = multiprocessing.get_context("spawn")
    start, stop = ctx.Event(), ctx.Event()
    outs = [folder / f"writer{k}.json" for k in range(writers)]
    procs = [ctx.Process(target=_writer, args=(str(db), mode, approvals, k, str(outs[k]), start)) for k in range(writers)]
    reader = ctx.Process(target=_reader, args=(str(db), mode, str(folder / "reader.json"), start, stop, pause))
    for p in procs + [reader]:
        p.start()
    time.sleep(3.0)  # every process imported and opened its store before the clock starts
    t0 = time.perf_counter()
    start.set()
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    stop.set()
    reader.join()
    w = [json.loads(o.read_text()) for o in outs]
    r = json.loads((folder / "reader.json").read_text())
    return {"mode": mode, "reader_pause": pause, "wall_s": wall, "reader": {**_stats(r["waits"]), "polls": r["polls"], "polls_per_s": r["polls"] / wall},
            "writers": _stats([x for one in w for x in one["waits"]]),
            "writer_seconds": [round(one["seconds"], 1) for one in w], "folder": str(folder)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--approvals", type=int, default=200, help="decisions per writer")
    parser.add_argument("--variants", type=int, default=200, help="variants in the store (the reader lists them all)")
    parser.add_argument("--modes", default="old,new", help="old: flock with backoff (before issue 11); new: FIFO turns")
    parser.add_argument("--reader-pause", type=float, default=0.0, help="seconds the reader waits between polls (0: back to back)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "store_lock.json"))
    args = parser.parse_args()
    results = []
    for mode in args.modes.split(","):
        res = run(mode, args.writers, args.approvals, args.variants, args.reader_pause)
        results.append(res)
        print(json.dumps(res), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nreader pause {args.reader_pause} s")
    print("| lock | run (s) | reader polls | reader wait p50 / p95 / max (s) | writer wait p50 / p95 / max (s) | writers done after (s) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        rd, wr = r["reader"], r["writers"]
        print(f"| {r['mode']} | {r['wall_s']:.1f} | {rd['polls']} ({rd['polls_per_s']:.1f}/s) | "
              f"{rd.get('p50', 0):.3f} / {rd.get('p95', 0):.3f} / {rd.get('max', 0):.3f} | "
              f"{wr['p50']:.3f} / {wr['p95']:.3f} / {wr['max']:.3f} | {', '.join(map(str, r['writer_seconds']))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
