"""Sharing the CPU with background jobs: while jobs run, the app's own model work (scoring, decoding,
traces) keeps to the cores they leave, and announces itself (reform_engine.cpu_share) so that the jobs
leave it a core meanwhile. Two torch processes on the same cores slow each other down many times over."""
from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

CPU_CHECK_SECONDS = 2.0      # how stale the count of running jobs may be when the app caps its threads
_KNOWN_STORES: dict[str, Any] = {}   # every project database this server has opened: their jobs share our cores
_cpu_lock = threading.Lock()
_cpu = {"checked_at": -math.inf, "running": 0, "full": 0}


def watch_store(path: str, store: Any) -> None:
    """Count the running jobs of ``store`` (a project database this server opened) from now on."""
    _KNOWN_STORES.setdefault(path, store)


def share_cpu() -> int:
    """Call in the thread about to run model work (torch keeps a thread count per thread): its torch
    threads become what the running jobs leave (jobs.app_threads: 1 on 2 cores while one runs), and
    the app's own default again when none runs -> that number. Safe from any thread; the store is
    read at most every CPU_CHECK_SECONDS."""
    import torch
    from reform_engine.jobs import app_threads, cpu_cores, max_jobs, running_jobs
    from reform_engine.runtime import set_cpu_threads

    with _cpu_lock:
        if not _cpu["full"]:
            _cpu["full"] = torch.get_num_threads()  # before any cap: the app's own default
        if time.monotonic() - _cpu["checked_at"] > CPU_CHECK_SECONDS:
            try:
                _cpu["running"] = sum(running_jobs(store) for store in list(_KNOWN_STORES.values()))
            except Exception:  # noqa: BLE001 - a busy or broken database must not stop the model work; keep the last count
                pass
            _cpu["checked_at"] = time.monotonic()
        try:
            n = app_threads(_cpu["running"], cores=cpu_cores(), limit=max_jobs(), full=_cpu["full"])
        except ValueError:  # a bad REFORM_MAX_JOBS: the job pages say so; here, assume one slot
            n = app_threads(_cpu["running"], cores=cpu_cores(), limit=1, full=_cpu["full"])
    set_cpu_threads(n)
    return n


@contextlib.contextmanager
def cpu_work() -> Iterator[Any]:
    """Run model work in the block: the calling thread's torch threads capped (:func:`share_cpu`) and
    claimed for the duration, so running jobs drop to the cores left -> the claim; call its
    ``update(share_cpu())`` between batches, where a job may have started or ended."""
    from reform_engine.cpu_share import claim

    with claim(share_cpu()) as held:
        yield held
