import argparse
import dataclasses
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from job_support import HANG_GUARD, wait_for
from reform_engine.__main__ import add_config_args, config_from_args
from reform_engine.configs import JobConfigError, config_from_dict
from reform_engine.data import write_jsonl
from reform_engine.jobs import (app_threads, cancel_job, cap_app_threads, command_line, cpu_cores, ingest_results, job_kinds,
                                max_jobs, process_alive, queue_position, refresh_job, rerun_job, start_job,
                                stop_process_group)
from reform_engine.reward_model import load_reward_model
from reform_engine.runs import RunDir, read_json, to_jsonable
from reform_engine.scoring import score_pairs
from reform_engine.store import Store, StoreError


@pytest.fixture()
def store(tmp_path):
    return Store(tmp_path / "project" / "reform.duckdb")


@pytest.fixture()
def toy_file(tmp_path, toy_pairs):
    path = tmp_path / "toy.jsonl"
    write_jsonl(path, [p.to_trl() for p in toy_pairs])
    return str(path)


def train_config(model_dir: str, data: str, **kw) -> dict:
    return {"model": {"base_model": model_dir, "finetune": "lora", "lora_r": 2, "lora_alpha": 4, "lora_layers": 1,
                      "max_length": 96},
            "data": data, "batch_size": 4, "runtime": {"device": "cpu", "threads": 1}, "warmup_ratio": 0.0, **kw}


def sleeper(*, ignore_term: bool = False, new_session: bool = False) -> subprocess.Popen:
    code = ("import signal, sys, time\n" + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
            + "print('ready', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=new_session)
    assert proc.stdout.readline() == "ready\n"
    return proc


def proc_start(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[19]


def test_command_line_round_trips_every_job_config():
    for kind, cls in job_kinds().items():
        required = {f.name: "some/path with spaces" for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        tricky = {f.name: "-5:" for f in dataclasses.fields(cls) if f.name in ("rows", "train_rows", "eval_rows")}
        if kind == "attack":  # two penalty RMs, other than the target
            required["penalty_rms"] = "penalty one,-penalty two"
        if kind == "best-of-n":  # a judge apart from the two RMs it compares
            required["judge_rm"] = "-the judge"
        if kind == "adv-rounds":  # its attack is a nested config
            from reform_engine.attack import AttackConfig
            required["attack"] = AttackConfig(target_rm="some/path with spaces", penalty_rms="penalty one,-penalty two", rows="-5:")
        config = cls(**required, **tricky)
        argv = command_line(kind, config, "/tmp/run dir")
        assert argv[:5] == [sys.executable, "-m", "reform_engine", kind, "--run-dir=/tmp/run dir"]
        parser = argparse.ArgumentParser()
        parser.add_argument("--run-dir")
        add_config_args(parser, cls)
        assert config_from_args(cls, parser.parse_args(argv[4:])) == config, kind


def test_a_nested_config_goes_through_the_command_line_and_the_store_as_its_fields():
    from reform_engine.attack import AttackConfig
    from reform_engine.configs import JobConfigError
    from reform_engine.confirm import ConfirmConfig
    from reform_engine.jobs import _config_object
    from reform_engine.runs import to_jsonable

    config = AttackConfig(target_rm="t", penalty_rms="a,b", confirm=ConfirmConfig(rules="capitals,prompt echo", capitals_ratio=0.7))
    argv = command_line("attack", config, "/r")
    assert "--confirm.rules=capitals,prompt echo" in argv and "--confirm.capitals-ratio=0.7" in argv
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir")
    add_config_args(parser, AttackConfig)
    assert config_from_args(AttackConfig, parser.parse_args(argv[4:])) == config
    assert _config_object("attack", to_jsonable(config)) == config  # the store keeps it as nested JSON
    with pytest.raises(JobConfigError, match=r"ConfirmConfig has no field\(s\) \['shouting'\]"):
        _config_object("attack", {**to_jsonable(config), "confirm": {"shouting": 1}})


def test_start_job_refuses_unknown_kinds_and_bad_configs(store):
    with pytest.raises(JobConfigError, match="kind='train-everything' is not a job. Fix: use one of"):
        start_job(store, "train-everything", {})
    with pytest.raises(JobConfigError, match=r"TrainRewardConfig has no field\(s\) \['colour'\]"):
        start_job(store, "train-rm", {"colour": "red"})
    with pytest.raises(JobConfigError, match="batch_size must be >= 1"):
        start_job(store, "train-rm", {"batch_size": 0})
    with pytest.raises(JobConfigError, match="config for eval-rm is a list"):
        start_job(store, "eval-rm", [])
    assert store.list_jobs().empty


def test_a_train_job_runs_in_its_own_process_and_leaves_its_results_in_its_run_directory(store, tiny_model_dir, toy_file):
    job_id = start_job(store, "train-rm", train_config(tiny_model_dir, toy_file, max_steps=2, eval_data=toy_file))
    started = store.get_job(job_id)
    assert started["state"] == "running" and started["pid"] != os.getpid()
    assert started["run_dir"] == str(store.path.parent / "runs" / f"{job_id:05d}-train-rm")
    job = wait_for(store, job_id, until=lambda j: j["state"] not in ("pending", "running") and j["exit_code"] is not None)
    assert (job["state"], job["progress"], job["step"], job["total"], job["exit_code"]) == ("succeeded", 1.0, 2, 2, 0)
    assert job["ingested"] and job["result_path"] == os.path.join(job["run_dir"], "metrics.json")
    assert "eval accuracy" in job["message"] and os.path.getsize(job["log_path"]) > 0
    metrics = read_json(job["result_path"])
    assert metrics["steps"] == 2 and metrics["eval"]["n"] == 8
    assert read_json(os.path.join(job["run_dir"], "checkpoint", "reward_model.json"))["base_model"] == tiny_model_dir
    assert ingest_results(store, job_id) == {"variants": []}  # a training job decodes nothing to curate


def test_sigkill_mid_checkpoint_marks_failed_and_keeps_the_previous_checkpoint(store, tiny_model_dir, toy_file, toy_pairs):
    config = train_config(tiny_model_dir, toy_file, max_steps=100_000, save_every=1, batch_size=2)
    job_id = start_job(store, "train-rm", config)
    job = store.get_job(job_id)
    run_dir = job["run_dir"]
    wait_for(store, job_id, until=lambda j: os.path.isfile(os.path.join(run_dir, "checkpoint", "reward_model.json")))
    # aim the kill at a checkpoint being written: a temp directory beside checkpoint/ exists only then
    for _ in range(200_000):
        if any(name.startswith(".checkpoint.") and name.endswith(".tmp") for name in os.listdir(run_dir)):
            break
    os.killpg(job["pid"], signal.SIGKILL)

    dead = wait_for(store, job_id)  # the kill lands asynchronously: the first look after it may still see the process
    assert dead["state"] == "failed" and dead["exit_code"] == -signal.SIGKILL
    assert dead["message"].startswith("process died: killed by SIGKILL (kill -9 or out of memory); last: step ")
    assert read_json(os.path.join(run_dir, "status.json"))["state"] == "failed"
    with open(os.path.join(run_dir, "log.txt")) as fh:
        log = fh.read()
    assert "checkpoint at step 1" in log and log.rstrip().endswith("marked failed: process died: killed by SIGKILL (kill -9 or out of memory)")
    rm = load_reward_model(os.path.join(run_dir, "checkpoint"), device="cpu")  # the previous complete checkpoint
    assert score_pairs(rm, toy_pairs[:2]).r_chosen.isfinite().all()
    reopened = Store(store.path)
    assert reopened.get_job(job_id)["state"] == "failed"

    rerun = rerun_job(reopened, job_id)
    fresh = reopened.get_job(rerun)
    assert (fresh["rerun_of"], fresh["kind"], fresh["config"]) == (job_id, "train-rm", dead["config"])
    assert fresh["run_dir"] != run_dir and fresh["state"] == "running"
    cancelled = cancel_job(reopened, rerun, grace=5)
    assert cancelled["state"] == "cancelled" and not process_alive(fresh["pid"], fresh["proc_start"])
    assert read_json(os.path.join(fresh["run_dir"], "status.json"))["state"] == "cancelled"
    assert refresh_job(reopened, rerun)["state"] == "cancelled"  # a later look does not turn it into "died"


def test_a_dead_process_is_detected_on_the_next_look(store, tmp_path):
    proc = sleeper()
    job_id = store.add_job("train-rm", {}, str(tmp_path / "run"))
    store.update_job(job_id, state="running", pid=proc.pid, proc_start=proc_start(proc.pid), run_dir=str(tmp_path / "run"))
    run = RunDir(tmp_path / "run")
    json_status = {"state": "running", "step": 3, "total": 10, "progress": 0.3, "message": "step 3/10", "pid": proc.pid}
    (tmp_path / "run" / "status.json").write_text(json.dumps(json_status))
    run.log("step 3")
    assert refresh_job(store, job_id)["step"] == 3
    with pytest.raises(StoreError, match="is still running. Fix: cancel it first"):
        rerun_job(store, job_id)
    with pytest.raises(StoreError, match="is still running"):
        ingest_results(store, job_id)
    os.kill(proc.pid, signal.SIGKILL)
    # not a child of the jobs module: it stays a zombie of this test, and the zombie counts as dead
    job = wait_for(store, job_id)
    assert (job["state"], job["exit_code"]) == ("failed", None)
    assert job["message"] == "process died; last: step 3/10"
    assert (tmp_path / "run" / "log.txt").read_text().splitlines()[0].endswith("step 3")  # the log is kept
    assert proc.wait() == -signal.SIGKILL  # its exit status was left to its parent


def test_a_reused_pid_counts_as_dead(store, tmp_path):
    job_id = store.add_job("eval-rm", {}, str(tmp_path / "run"))
    store.update_job(job_id, state="running", pid=os.getpid(), proc_start="1")  # our pid, another start time
    assert not process_alive(os.getpid(), "1") and process_alive(os.getpid(), proc_start(os.getpid()))
    assert refresh_job(store, job_id)["state"] == "failed"


def test_stop_process_group_escalates_to_sigkill():
    proc = sleeper(ignore_term=True, new_session=True)
    stop_process_group(proc.pid, proc_start(proc.pid), grace=0.5)
    assert proc.wait(timeout=HANG_GUARD) == -signal.SIGKILL


def test_ingest_reads_every_finished_stage_of_a_pipeline_once(store, tmp_path):
    from reform_engine.decoding import StepRecord
    from reform_engine.inversions import Variant

    def stage(name: str, state: str, metrics: dict, config: dict, variants: list | None = None):
        d = tmp_path / "pipe" / name
        run = RunDir(d)
        run.write_config(config)
        run.write_metrics(metrics)
        run.set_status(state)
        if variants is not None:
            write_jsonl(d / "variants.jsonl", [v.to_record() for v in variants])

    step = StepRecord(0, [7, 8], ["Hi", "Yo"], [-0.1, -2.0], [0.5, 0.25], [-0.6, -2.25], 0, 7, "Hi", 0.5, False)
    prompt = ({"role": "user", "content": "hello?"},)
    found = Variant("demo:3", "lower", prompt, "Hello there!", "Go away.", "Hi", -2.0, -2.0, 1.0, -1.0, 1.0, 12.5, True, [step])
    missed = Variant("demo:4", "raise", prompt, "Hello there!", "Go away.", "", float("nan"), 0.0, 1.0, -1.0, float("nan"),
                     float("nan"), False, [])
    stage("", "running", {}, {})
    stage("variants_lowest_loss", "succeeded", {"stats": {}}, {"reward_model": "base/checkpoint"}, [found, missed])
    stage("variants_random", "failed", {}, {"reward_model": "base/checkpoint"}, [found])  # unfinished: ignored
    stage("robustness_base", "succeeded", {"clean_win_rate": 0.75, "mean_drop": 0.125}, {"reward_model": "base/checkpoint"})
    job_id = store.add_job("pipeline", {}, str(tmp_path / "pipe"))
    store.update_job(job_id, state="failed")

    out = ingest_results(store, job_id)
    assert out == {"variants": [1, 2]}
    assert ingest_results(store, job_id) == out and len(store.list_variants(inversions_only=False)) == 2
    stored = store.get_variant(1)
    assert (stored["pair_id"], stored["text"], stored["trace"], stored["steps"][0]["candidate_pieces"]) == ("demo:3", "Hi", [0.5], ["Hi", "Yo"])
    assert store.get_variant(2)["is_inversion"] is False
    assert store.get_job(job_id)["ingested"] is True

    # a compare job decodes and attacks only to measure: the same files in its stages stay out of Curation
    measuring = store.add_job("compare", {}, str(tmp_path / "pipe"))
    store.update_job(measuring, state="succeeded")
    assert ingest_results(store, measuring) == {"variants": []} and store.get_job(measuring)["ingested"] is True
    assert len(store.list_variants(inversions_only=False)) == 2

    # resumed in the same run directory, twice: what an earlier job of the chain sent to Curation is not sent again
    later = Variant("demo:5", "lower", prompt, "Hello there!", "Go away.", "Hey", -2.0, -2.0, 1.0, -1.0, 1.0, 12.5, True, [step])
    stage("variants_random", "succeeded", {"stats": {}}, {"reward_model": "base/checkpoint"}, [found, later])
    resumed = store.add_job("pipeline", {}, str(tmp_path / "pipe"))
    store.update_job(resumed, state="cancelled", rerun_of=job_id)
    again = store.add_job("pipeline", {}, str(tmp_path / "pipe"))
    store.update_job(again, state="succeeded", rerun_of=resumed)
    first = ingest_results(store, resumed)["variants"]
    assert first[:3] == [1, 2, 1] and first[3] not in (1, 2)
    assert ingest_results(store, again)["variants"] == first
    assert sorted(store.list_variants(inversions_only=False)["text"].tolist()) == ["", "Hey", "Hi"]
    elsewhere = store.add_job("pipeline", {}, str(tmp_path / "pipe"))  # rerun_of a job in another directory: its own copies
    other = store.add_job("pipeline", {}, str(tmp_path / "other"))
    store.update_job(other, state="failed")
    store.update_job(elsewhere, state="succeeded", rerun_of=other)
    own = ingest_results(store, elsewhere)["variants"]
    assert len(set(own)) == 3 and not set(own) & set(first)


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def hold_the_slot(store, tmp_path, name="busy") -> tuple[int, subprocess.Popen]:
    """A job the store sees running (a sleeping process), so that with one slot every start queues."""
    proc = sleeper()
    job_id = store.add_job("eval-rm", {}, str(tmp_path / name))
    store.update_job(job_id, state="running", pid=proc.pid, proc_start=proc_start(proc.pid))
    return job_id, proc


def _race_start(store_path, run_dir, config, gate, results) -> None:
    store = Store(store_path)
    gate.wait()
    try:
        results.put(start_job(store, "train-rm", config, run_dir))
    except StoreError as exc:
        results.put(str(exc))


def test_racing_starts_on_one_run_dir_make_exactly_one_job(store, tmp_path, tiny_model_dir, toy_file, monkeypatch):
    monkeypatch.setenv("REFORM_MAX_JOBS", "1")
    _, busy = hold_the_slot(store, tmp_path)  # the winner only queues: no training runs in this test
    run_dir = tmp_path / "project" / "runs" / "base-rm"
    config = train_config(tiny_model_dir, toy_file, max_steps=1)
    job_kinds()  # imported once here, not in each forked racer
    fork = multiprocessing.get_context("fork")
    for trial in range(4):  # before the fix, about half of such trials put two jobs in the directory
        gate, results = fork.Barrier(8), fork.Queue()
        racers = [fork.Process(target=_race_start, args=(store.path, run_dir, config, gate, results)) for _ in range(8)]
        for p in racers:
            p.start()
        outcomes = [results.get(timeout=HANG_GUARD) for _ in racers]
        for p in racers:
            p.join()
        ids = [o for o in outcomes if isinstance(o, int)]
        assert len(ids) == 1, (trial, outcomes)
        assert sorted(o for o in outcomes if isinstance(o, str)) == [
            f"job {ids[0]} is still using {run_dir}. Fix: wait for it, cancel it, or pick another run_dir."] * 7
        assert cancel_job(store, ids[0])["state"] == "cancelled"
    jobs = store.list_jobs()
    assert jobs[jobs["run_dir"] == str(run_dir)]["state"].tolist() == ["cancelled"] * 4
    busy.kill()
    busy.wait()


def test_a_queued_job_can_be_cancelled_and_never_starts(store, tmp_path, tiny_model_dir, toy_file, monkeypatch):
    monkeypatch.setenv("REFORM_MAX_JOBS", "1")
    busy_id, busy = hold_the_slot(store, tmp_path)
    first = start_job(store, "train-rm", train_config(tiny_model_dir, toy_file, max_steps=1))
    second = start_job(store, "train-rm", train_config(tiny_model_dir, toy_file, max_steps=1))
    assert [refresh_job(store, i)["state"] for i in (first, second)] == ["queued", "queued"]
    assert (queue_position(store, first), queue_position(store, second)) == (1, 2)
    cancelled = cancel_job(store, first)
    assert (cancelled["state"], cancelled["message"], cancelled["pid"]) == ("cancelled", "cancelled while queued", None)
    assert cancelled["finished_at"] is not None
    assert (queue_position(store, first), queue_position(store, second)) == (None, 1)
    assert cancel_job(store, second)["state"] == "cancelled"
    busy.kill()
    busy.wait()
    assert refresh_job(store, busy_id)["state"] == "failed"  # the slot is free now, and nothing is left to start
    assert [store.get_job(i)["pid"] for i in (first, second)] == [None, None]
    assert not os.path.exists(store.get_job(first)["run_dir"])  # never started: nothing was written


def test_with_one_slot_the_second_job_waits_and_starts_when_the_first_ends(store, tiny_model_dir, toy_file, monkeypatch):
    monkeypatch.setenv("REFORM_MAX_JOBS", "1")
    first = start_job(store, "train-rm", train_config(tiny_model_dir, toy_file, max_steps=2))
    second = start_job(store, "train-rm", train_config(tiny_model_dir, toy_file, max_steps=1))
    waiting = store.get_job(second)
    assert (store.get_job(first)["state"], waiting["state"], waiting["message"], waiting["pid"]) == ("running", "queued", "queued", None)
    assert queue_position(store, second) == 1 and queue_position(store, first) is None
    assert refresh_job(store, second)["state"] == "queued"  # a look while the slot is taken starts nothing
    # no one polls now, as with no page open: the first job's own process starts the second as it ends
    job = store.get_job(first)
    deadline = time.monotonic() + HANG_GUARD
    while process_alive(job["pid"], job["proc_start"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    handed = store.get_job(second)
    assert store.get_job(first)["state"] == "succeeded"
    assert handed["state"] == "running" and handed["pid"] not in (None, job["pid"])
    assert handed["started_at"] >= store.get_job(first)["finished_at"]
    done = wait_for(store, second)
    assert (done["state"], done["step"]) == ("succeeded", 1)
    assert [os.path.isdir(os.path.join(store.get_job(i)["run_dir"], "checkpoint")) for i in (first, second)] == [True, True]


def test_max_jobs_comes_from_the_setting_or_the_core_count():
    assert max_jobs({"REFORM_MAX_JOBS": "3"}) == 3
    assert max_jobs({}) == max(1, cpu_cores() // 4)
    for bad in ("0", "two", "-1"):
        with pytest.raises(StoreError, match=f"REFORM_MAX_JOBS='{bad}' is not a whole number >= 1. Fix: unset it"):
            max_jobs({"REFORM_MAX_JOBS": bad})


def test_the_app_takes_only_the_cores_the_running_jobs_leave(store, tmp_path, monkeypatch):
    assert [app_threads(n, cores=2, limit=1, full=2) for n in (0, 1)] == [2, 1]
    assert [app_threads(n, cores=8, limit=2, full=4) for n in (0, 1, 2)] == [4, 4, 1]
    assert app_threads(1, cores=16, limit=4, full=8) == 8
    monkeypatch.setenv("REFORM_MAX_JOBS", "1")
    monkeypatch.setattr("reform_engine.jobs.cpu_cores", lambda: 2)
    seen = []

    def app_work():  # torch keeps a thread count per thread: the cap is set where the model work runs
        before = torch.get_num_threads()
        seen.append((cap_app_threads(store, full=2), torch.get_num_threads()))
        job_id, proc = hold_the_slot(store, tmp_path)
        seen.append((cap_app_threads(store, full=2), torch.get_num_threads()))
        proc.kill()
        proc.wait()  # the job died and no page has looked yet: its row still says running
        assert store.get_job(job_id)["state"] == "running"
        seen.append((cap_app_threads(store, full=2), torch.get_num_threads()))
        torch.set_num_threads(before)

    worker = threading.Thread(target=app_work)
    worker.start()
    worker.join()
    assert seen == [(2, 2), (1, 1), (2, 2)]


def test_polling_a_dead_job_on_a_full_disk_marks_it_failed_and_never_raises(store, tmp_path, monkeypatch):
    proc = sleeper()
    run = RunDir(tmp_path / "run")
    run.set_status("running", step=3, total=10, message="step 3/10")
    job_id = store.add_job("train-rm", {}, str(run.path))
    store.update_job(job_id, state="running", pid=proc.pid, proc_start=proc_start(proc.pid))
    (run.path / "status.json").write_text(json.dumps({**run.status(), "pid": proc.pid}))
    os.kill(proc.pid, signal.SIGKILL)
    monkeypatch.setattr("reform_engine.jobs.atomic_write_json", full_disk)
    job = wait_for(store, job_id)
    assert (job["state"], job["message"]) == (
        "failed", "process died; last: step 3/10; run directory not updated: [Errno 28] No space left on device")
    assert refresh_job(store, job_id)["state"] == "failed"  # and the next poll is quiet too
    proc.wait()


def test_an_unreadable_status_never_breaks_a_poll(store, tmp_path, monkeypatch):
    proc = sleeper()
    job_id = store.add_job("train-rm", {}, str(tmp_path / "run"))
    store.update_job(job_id, state="running", pid=proc.pid, proc_start=proc_start(proc.pid), message="step 1/10")
    RunDir(tmp_path / "run").set_status("running", message="step 2/10")
    for error in (OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EIO, "Input/output error"),
                  json.JSONDecodeError("Expecting value", "{", 1)):
        def unreadable(*args, error=error, **kwargs):
            raise error
        monkeypatch.setattr("reform_engine.jobs.read_json", unreadable)
        assert (refresh_job(store, job_id)["state"], store.get_job(job_id)["message"]) == ("running", "step 1/10")
    os.kill(proc.pid, signal.SIGKILL)
    job = wait_for(store, job_id)  # still unreadable: the process tells the story
    assert (job["state"], job["message"]) == ("failed", "process died; results not ingested: Expecting value: line 1 column 2 (char 1)")
    proc.wait()


def test_a_job_that_cannot_write_its_status_tells_the_store_its_real_error(store, tmp_path, tiny_model_dir, toy_file):
    config = config_from_dict(job_kinds()["train-rm"], train_config(tiny_model_dir, toy_file, max_steps=1))
    run_dir = tmp_path / "run"
    job_id = store.add_job("train-rm", to_jsonable(config), str(run_dir))
    code = ("import errno, sys\n"
            "from reform_engine import runs\n"
            "from reform_engine.__main__ import main\n"
            "def full_disk(*args, **kwargs):\n"
            "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "runs.atomic_write_bytes = runs.overwrite_in_place = full_disk\n"
            "main(sys.argv[1:])\n")
    env = {**os.environ, "REFORM_JOB_STORE": str(store.path), "REFORM_JOB_ID": str(job_id)}
    proc = subprocess.Popen([sys.executable, "-c", code] + command_line("train-rm", config, run_dir)[3:], env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    store.update_job(job_id, state="running", pid=proc.pid, proc_start=proc_start(proc.pid))
    assert "OSError: [Errno 28] No space left on device" in proc.communicate(timeout=HANG_GUARD)[1]
    assert proc.returncode == 1
    job = store.get_job(job_id)  # nobody refreshed: the job's own process said it
    assert (job["state"], job["message"]) == ("failed", "OSError: [Errno 28] No space left on device")
    assert not (run_dir / "status.json").exists()


def test_a_job_killed_between_the_checkpoint_renames_gets_its_checkpoint_back(store, tmp_path, tiny_rm):
    proc = sleeper()
    run_dir = tmp_path / "run"
    tiny_rm.save(run_dir / "checkpoint")
    os.replace(run_dir / "checkpoint", run_dir / ".checkpoint.old")
    job_id = store.add_job("train-rm", {}, str(run_dir))
    store.update_job(job_id, state="running", pid=proc.pid, proc_start=proc_start(proc.pid))
    os.kill(proc.pid, signal.SIGKILL)
    assert wait_for(store, job_id)["state"] == "failed"
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint", "log.txt", "status.json"]
    assert load_reward_model(str(run_dir / "checkpoint"), device="cpu").spec == tiny_rm.spec
    proc.wait()


def test_a_run_made_outside_the_app_is_added_as_a_finished_job_once(store, tmp_path):
    from reform_engine.jobs import ADOPTED_NOTE, adopt_run, rerun_job, run_kinds
    from reform_engine.robustness import RobustnessConfig

    run = tmp_path / "cli-run"
    config = RobustnessConfig(reward_model="/some/rm", data="pairs.jsonl", perturbations="verbosity")
    RunDir(run).write_config(config)
    RunDir(run).set_status("succeeded", progress=1.0, message="clean win rate 0.700")
    assert run_kinds(run) == ["robustness"] and run_kinds(tmp_path / "nothing") == []
    job_id = adopt_run(store, run)
    job = store.get_job(job_id)
    assert (job["kind"], job["state"], job["progress"], job["ingested"], job["run_dir"]) == ("robustness", "succeeded", 1.0, True, str(run.resolve()))
    assert job["message"] == f"clean win rate 0.700 ({ADOPTED_NOTE})" and job["config"]["reward_model"] == "/some/rm"
    assert job["started_at"] <= job["finished_at"]
    with pytest.raises(StoreError, match=rf"already has {run.resolve()} as job #{job_id}"):
        adopt_run(store, str(run) + "/")
    with pytest.raises(JobConfigError, match=r"TrainRewardConfig has no field\(s\)"):
        adopt_run(store, run, "train-rm")
    again = rerun_job(store, job_id, same_run_dir=True)  # Resume works on it like on any job
    assert store.get_job(again)["run_dir"] == str(run.resolve()) and store.get_job(again)["rerun_of"] == job_id
    cancel_job(store, again, grace=5)


def test_a_run_that_has_not_ended_or_is_no_run_is_refused_saying_why(store, tmp_path):
    from reform_engine.jobs import adopt_run
    from reform_engine.training import TrainRewardConfig

    with pytest.raises(StoreError, match="is not a directory"):
        adopt_run(store, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no readable config.json"):
        adopt_run(store, tmp_path / "empty")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(StoreError, match="no job's config"):
        adopt_run(store, tmp_path / "foreign")
    running = tmp_path / "running"
    running.mkdir()
    RunDir(running).write_config(TrainRewardConfig(data="x.jsonl"))
    RunDir(running).set_status("running", progress=0.4)
    with pytest.raises(StoreError, match=r"has not ended \(state 'running'\); it may still be running"):
        adopt_run(store, running)
    assert store.list_jobs().empty
