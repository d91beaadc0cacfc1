import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from reform_engine.__main__ import add_config_args, config_from_args
from reform_engine.data import write_jsonl
from reform_engine.jobs import (cancel_job, command_line, ingest_results, job_kinds, process_alive, refresh_job,
                                rerun_job, start_job, stop_process_group)
from reform_engine.reward_model import load_reward_model
from reform_engine.runs import RunDir, read_json
from reform_engine.scoring import score_pairs
from reform_engine.store import Store, StoreError

HANG_GUARD = 600  # seconds: only so a broken job cannot hang the suite; never a speed requirement


@pytest.fixture()
def store(tmp_path):
    return Store(tmp_path / "project" / "reform.duckdb")


@pytest.fixture()
def toy_file(tmp_path, toy_pairs):
    path = tmp_path / "toy.jsonl"
    write_jsonl(path, [p.to_trl() for p in toy_pairs])
    return str(path)


def train_config(model_dir: str, data: str, **kw) -> dict:
    return {"model": model_dir, "data": data, "finetune": "lora", "lora_r": 2, "lora_alpha": 4, "lora_layers": 1,
            "batch_size": 4, "max_length": 96, "device": "cpu", "threads": 1, "warmup_ratio": 0.0, **kw}


def wait_for(store, job_id, until=lambda job: job["state"] not in ("pending", "running")) -> dict:
    deadline = time.monotonic() + HANG_GUARD
    while True:
        job = refresh_job(store, job_id)
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}: {job['message']}"
        time.sleep(0.2)


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
        config = cls(**required, **tricky)
        argv = command_line(kind, config, "/tmp/run dir")
        assert argv[:5] == [sys.executable, "-m", "reform_engine", kind, "--run-dir=/tmp/run dir"]
        parser = argparse.ArgumentParser()
        parser.add_argument("--run-dir")
        add_config_args(parser, cls)
        assert config_from_args(cls, parser.parse_args(argv[4:])) == config, kind


def test_start_job_refuses_unknown_kinds_and_bad_configs(store):
    with pytest.raises(StoreError, match="kind='train-everything' is not a job. Fix: use one of"):
        start_job(store, "train-everything", {})
    with pytest.raises(StoreError, match=r"TrainRewardConfig has no field\(s\) \['colour'\]"):
        start_job(store, "train-rm", {"colour": "red"})
    with pytest.raises(StoreError, match="batch_size must be >= 1"):
        start_job(store, "train-rm", {"batch_size": 0})
    with pytest.raises(StoreError, match="config for eval-rm is a list"):
        start_job(store, "eval-rm", [])
    assert store.list_jobs().empty


def test_a_train_job_runs_in_its_own_process_and_its_results_are_ingested(store, tiny_model_dir, toy_file):
    job_id = start_job(store, "train-rm", train_config(tiny_model_dir, toy_file, max_steps=2, eval_data=toy_file))
    started = store.get_job(job_id)
    assert started["state"] == "running" and started["pid"] != os.getpid()
    assert started["run_dir"] == str(store.path.parent / "runs" / f"{job_id:05d}-train-rm")
    job = wait_for(store, job_id, until=lambda j: j["state"] not in ("pending", "running") and j["exit_code"] is not None)
    assert (job["state"], job["progress"], job["step"], job["total"], job["exit_code"]) == ("succeeded", 1.0, 2, 2, 0)
    assert job["ingested"] and job["result_path"] == os.path.join(job["run_dir"], "metrics.json")
    assert "eval accuracy" in job["message"] and os.path.getsize(job["log_path"]) > 0
    checkpoints = store.list_checkpoints()
    assert checkpoints[["path", "label", "base_model", "job_id"]].values.tolist() == [
        [os.path.join(job["run_dir"], "checkpoint"), f"train-rm #{job_id}", tiny_model_dir, job_id]]
    assert checkpoints["metrics"][0]["steps"] == 2 and "loss_curve" not in checkpoints["metrics"][0]
    evals = store.list_eval_results()
    assert evals["label"].tolist() == [f"train-rm #{job_id}"] and evals["metrics"][0]["n"] == 8
    again = ingest_results(store, job_id)  # idempotent
    assert again == {"checkpoints": [int(checkpoints["id"][0])], "variants": [], "eval_results": [int(evals["id"][0])]}
    assert len(store.list_checkpoints()) == 1 and len(store.list_eval_results()) == 1


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
    assert reopened.list_checkpoints().empty  # a failed run's checkpoint is not registered as a result

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
    assert out == {"checkpoints": [], "variants": [1, 2], "eval_results": [1]}
    assert ingest_results(store, job_id) == out and len(store.list_variants(inversions_only=False)) == 2
    stored = store.get_variant(1)
    assert (stored["pair_id"], stored["text"], stored["trace"], stored["steps"][0]["candidate_pieces"]) == ("demo:3", "Hi", [0.5], ["Hi", "Yo"])
    assert store.get_variant(2)["is_inversion"] is False
    assert store.list_eval_results()[["label", "metrics"]].values.tolist() == [
        [f"pipeline #{job_id} robustness_base", {"reward_model": "base/checkpoint", "clean_win_rate": 0.75, "mean_drop": 0.125}]]
    assert store.get_job(job_id)["ingested"] is True
