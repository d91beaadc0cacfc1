import math

import pytest

from reform_engine.reports import (checkpoint_name, finished_result_jobs, history_frame, job_results, latest_job, log_tail,
                                   loss_curves, results_frames, stage_status)
from reform_engine.runs import RunDir, atomic_write_json
from reform_engine.store import Store


@pytest.fixture()
def store(tmp_path):
    return Store(tmp_path / "project" / "reform.duckdb")


def robustness_metrics(clean: float, drops: dict) -> dict:
    return {"n_pairs": 4, "clean_win_rate": clean, "mean_drop": sum(drops.values()) / len(drops),
            "per_perturbation": [{"name": n, "side": "chosen", "clean_win_rate": clean, "perturbed_win_rate": clean - d,
                                  "drop": d} for n, d in drops.items()], "indicators": None, "seconds": 1.0}


def finished(store, kind: str, run_dir, **files) -> dict:
    """A job row marked succeeded whose run directory holds ``files`` (name -> JSON)."""
    job_id = store.add_job(kind, {}, str(run_dir))
    for name, obj in files.items():
        atomic_write_json(run_dir / name, obj)
    return store.update_job(job_id, state="succeeded", progress=1.0, message="done")


def test_robustness_and_report_results_become_summary_and_long_drop_frames(store, tmp_path):
    rob = finished(store, "robustness", tmp_path / "rob", **{
        "metrics.json": robustness_metrics(0.75, {"verbosity": 0.25, "capitalization": 0.0}),
        "config.json": {"reward_model": str(tmp_path / "runs" / "base-rm" / "checkpoint")}})
    report = {"models": [{"name": "base", "checkpoint": "b", "clean_accuracy": 0.5, "mean_drop": 0.2,
                          "drops": {"verbosity": 0.3, "capitalization": 0.1}},
                         {"name": "retrained", "checkpoint": "r", "clean_accuracy": 0.75, "mean_drop": 0.05,
                          "drops": {"verbosity": 0.1, "capitalization": 0.0}}]}
    retrain = finished(store, "retrain", tmp_path / "re", **{"report.json": report})
    summary, drops = results_frames([retrain, rob])
    assert summary[["label", "model", "clean_accuracy", "mean_drop"]].values.tolist() == [
        [f"#{rob['id']} base-rm", "base-rm", 0.75, 0.125], [f"#{retrain['id']} base", "base", 0.5, 0.2],
        [f"#{retrain['id']} retrained", "retrained", 0.75, 0.05]]
    assert math.isnan(summary["drop_vs_base"][0]) and summary["drop_vs_base"].tolist()[1:] == [1.0, pytest.approx(0.25)]
    assert sorted(drops[drops["label"] == f"#{retrain['id']} retrained"][["perturbation", "drop"]].values.tolist()) == [
        ["capitalization", 0.0], ["verbosity", 0.1]]
    assert len(drops) == 6
    assert [j["id"] for j in finished_result_jobs(store)] == [retrain["id"], rob["id"]]


def test_jobs_without_results_give_empty_frames(store, tmp_path):
    running = store.add_job("pipeline", {}, str(tmp_path / "p"))
    broken = finished(store, "pipeline", tmp_path / "broken", **{"report.json": {"oops": 1}})
    train = finished(store, "train-rm", tmp_path / "t", **{"metrics.json": {"steps": 2}})
    assert job_results(store.get_job(running)) == ([], []) and job_results(broken) == ([], [])
    summary, drops = results_frames([broken, train])
    assert summary.empty and drops.empty and list(drops.columns)[-4:] == ["perturbation", "drop", "low", "high"]
    assert finished_result_jobs(store) == []


def test_history_latest_job_and_stage_status(store, tmp_path):
    assert history_frame(store).empty
    first = store.add_job("train-rm", {}, str(tmp_path / "base-rm"))
    store.update_job(first, state="running")
    store.update_job(first, state="failed", message="boom")
    second = store.add_job("train-rm", {}, str(tmp_path / "base-rm"))
    store.add_job("robustness", {}, str(tmp_path / "rob"))
    history = history_frame(store, kinds=["train-rm"])
    assert history["id"].tolist() == [second, first] and history["state"].tolist() == ["pending", "failed"]
    assert history["minutes"][1] >= 0 and math.isnan(history["minutes"][0])
    assert latest_job(store, "train-rm", tmp_path / "base-rm")["id"] == second
    assert latest_job(store, "train-rm", tmp_path / "elsewhere") is None and latest_job(store, "pipeline") is None

    run = tmp_path / "pipe"
    RunDir(run / "base").set_status("succeeded", progress=1.0, message="done")
    (run / "base" / "config.json").write_text("{}")
    RunDir(run / "influence").set_status("running", progress=0.5, message="3/6 scored")
    (run / "influence" / "config.json").write_text("{}")
    (run / ".checkpoint.tmp").mkdir()
    assert [(s["stage"], s["state"], s["progress"]) for s in stage_status(run)] == [
        ("base", "succeeded", 1.0), ("influence", "running", 0.5)]
    assert stage_status(tmp_path / "nothing") == [] and stage_status(None) == []


def test_loss_curves_come_from_the_run_and_its_training_stages_in_order(tmp_path):
    train = tmp_path / "base-rm"
    RunDir(train).set_status("succeeded", progress=1.0)
    atomic_write_json(train / "metrics.json", {"steps": 3, "final_loss": 0.5, "loss_curve": [0.75, 0.625, 0.5]})
    assert loss_curves(train) == {"base-rm": [0.75, 0.625, 0.5]}

    run = tmp_path / "pipe"
    for stage, metrics in (("base", {"loss_curve": [0.7, 0.6]}), ("eval_base", {"clean_win_rate": 0.5}),
                           ("retrain", {"loss_curve": [0.5, 0.25]})):
        RunDir(run / stage).set_status("succeeded", progress=1.0)
        atomic_write_json(run / stage / "config.json", {})
        atomic_write_json(run / stage / "metrics.json", metrics)
    assert loss_curves(run) == {"base": [0.7, 0.6], "retrain": [0.5, 0.25]}  # the evaluation stage trained nothing
    assert loss_curves(tmp_path / "nothing") == {} and loss_curves(None) == {}


def test_log_tail_reads_both_logs_and_keeps_the_last_state_of_progress_bars(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.txt").write_text("".join(f"line {i}\n" for i in range(100)))
    (run / "process.log").write_bytes(b"train-rm:  10%\rtrain-rm:  50%\rtrain-rm: 100%\nTraceback: boom\n")
    tail = log_tail({"run_dir": str(run), "log_path": str(run / "process.log")}, max_lines=3)
    assert tail == "==> log.txt <==\nline 97\nline 98\nline 99\n\n==> process.log <==\ntrain-rm: 100%\nTraceback: boom"
    assert log_tail({"run_dir": str(tmp_path / "gone"), "log_path": None}) == ""


def test_checkpoint_name():
    assert checkpoint_name("/p/runs/00003-train-rm/checkpoint") == "00003-train-rm"
    assert checkpoint_name("/p/rms/my-rm/") == "my-rm" and checkpoint_name("org/model") == "model"


def test_a_report_with_intervals_gives_each_value_its_interval_ends_and_an_old_one_leaves_them_empty(store, tmp_path):
    ci = lambda e, lo, hi: {"estimate": e, "low": lo, "high": hi, "n": 4, "level": 0.95}  # noqa: E731
    report = {"models": [{"name": "base", "checkpoint": "b", "clean_accuracy": 0.5, "mean_drop": 0.2, "drops": {"verbosity": 0.2},
                          "n_pairs": 4, "intervals": {"clean_accuracy": ci(0.5, 0.25, 0.75), "mean_drop": ci(0.2, 0.0, 0.5),
                                                       "drops": {"verbosity": ci(0.2, 0.0, 0.5)}}},
                         {"name": "retrained", "checkpoint": "r", "clean_accuracy": 0.75, "mean_drop": 0.1, "drops": {"verbosity": 0.1},
                          "n_pairs": 4, "intervals": {"clean_accuracy": ci(0.75, 0.5, 1.0), "mean_drop": ci(0.1, 0.0, 0.25),
                                                       "drops": {"verbosity": ci(0.1, 0.0, 0.25)},
                                                       "vs_base": {"drop_ratio": ci(0.5, 0.0, 1.5)}}}]}
    new = finished(store, "retrain", tmp_path / "new", **{"report.json": report})
    old = finished(store, "retrain", tmp_path / "old", **{"report.json": {"models": [
        {k: v for k, v in m.items() if k not in ("intervals", "n_pairs")} for m in report["models"]]}})
    summary, drops = results_frames([new, old])
    assert summary[["n_pairs", "clean_accuracy_low", "clean_accuracy_high", "mean_drop_low"]].values.tolist()[:2] == [
        [4, 0.25, 0.75, 0.0], [4, 0.5, 1.0, 0.0]]
    assert math.isnan(summary["drop_vs_base_high"][0]) and summary["drop_vs_base_high"][1] == 1.5   # the base has no ratio
    assert drops[["low", "high"]].values.tolist()[:2] == [[0.0, 0.5], [0.0, 0.25]]
    assert summary.iloc[2:][["clean_accuracy_low", "mean_drop_high"]].isna().all().all()
    assert drops.iloc[2:][["low", "high"]].isna().all().all()
