"""Waiting for a background job in the tests: how long at the most, and until what."""
import time

from reform_engine.jobs import refresh_job

HANG_GUARD = 600  # seconds: only so a broken job cannot hang the suite; never a speed requirement


def wait_for(store, job_id, until=lambda job: job["state"] not in ("pending", "running")) -> dict:
    """Refresh job ``job_id`` from its run directory until ``until(job)`` holds (by default: it has
    ended) -> the job then. Fails after HANG_GUARD seconds, saying the job's state and message."""
    deadline = time.monotonic() + HANG_GUARD
    while True:
        job = refresh_job(store, job_id)
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}: {job['message']}"
        time.sleep(0.2)
