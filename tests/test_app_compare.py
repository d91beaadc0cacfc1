"""The REFORM vs Adv-RM page under AppTest, on real tiny runs: the two finished runs are picked, a
compare job runs in the background to the end, and its table is drawn with error bars."""
import json

import pytest
from streamlit.testing.v1 import AppTest

from adversary_support import save_compared_runs
from app_support import APP, app_env, no_thread_outlives_the_tests, run, until_job_ends  # noqa: F401  (a fixture)
from reform_engine.store import Store


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    return save_compared_runs(tmp_path_factory.mktemp("compare-app"))


@pytest.fixture()
def env(runs, tmp_path, monkeypatch):
    db = app_env(monkeypatch, tmp_path / "project", policy=runs["models"]["policy"], reward_model=runs["base"],
                 data=runs["models"]["data"])
    store = Store(db)
    ids = {}
    for kind in ("pipeline", "adv-rounds"):  # the runs as the jobs that made them
        ids[kind] = store.add_job(kind, {}, str(runs["pipeline" if kind == "pipeline" else "rounds"]))
        store.update_job(ids[kind], state="succeeded")
    return {**runs, "db": db, "ids": ids}


def test_the_page_compares_a_pipeline_and_an_adv_rounds_run_and_draws_the_intervals(env):
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/compare.py")
    run(at)
    assert at.selectbox(key="compare_pipeline").value == env["ids"]["pipeline"]
    assert at.selectbox(key="compare_rounds").value == env["ids"]["adv-rounds"]
    at.button(key="compare_start").click()
    run(at)
    store = Store(env["db"])
    job_id = int(store.list_jobs("compare")["id"].iloc[0])
    assert any(f"Started compare job #{job_id}" in s.value for s in at.success)
    assert store.get_job(job_id)["config"]["pipeline_dir"] == str(env["pipeline"])
    until_job_ends(at, env["db"], job_id)
    assert store.get_job(job_id)["state"] == "succeeded", store.get_job(job_id)["message"]
    checks = next(d.value for d in at.dataframe if "check" in d.value.columns)
    assert "same base RM" in checks["check"].tolist()
    prefers = next(d.value for d in at.dataframe if "target_prefers" in d.value.columns)
    assert len(prefers) == 4 and (prefers["value"] <= prefers["target_prefers"]).all()
    spurious = next(d.value for d in at.dataframe if "extreme_negative_share" in d.value.columns)
    assert spurious["model"].tolist() == ["base", "REFORM", "Adv-RM"] and spurious["length_corr"].notna().all()
    charts = at.get("plotly_chart")
    assert len(charts) == 8  # success, on the same prompts, efficiency, accuracy, drops, paired differences, cross-attacks; in the run
    loss = json.loads(charts[7].proto.spec)  # history, the loss curves of the reward models the job retrained
    assert loss["layout"]["title"]["text"].startswith("Training loss") and all(trace["y"] for trace in loss["data"])
    success = charts[0].proto.spec
    assert '"error_y"' in success and '"arrayminus"' in success  # every bar carries its interval


def test_a_run_still_running_is_offered_once_the_stages_compared_finished_and_a_bare_one_is_not(env, tmp_path):
    store = Store(env["db"])
    running = store.add_job("pipeline", {}, str(env["pipeline"]))   # the same finished stages, its job still running
    store.update_job(running, state="running")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "status.json").write_text(json.dumps({"state": "running"}))
    unfinished = store.add_job("pipeline", {}, str(bare))
    store.update_job(unfinished, state="running")
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/compare.py")
    run(at)
    box = at.selectbox(key="compare_pipeline")
    assert set(box.options) == {f"#{env['ids']['pipeline']} pipeline",
                                f"#{running} pipeline (running; the stages compared have finished)"}
