"""The REFORM vs Adv-RM page under AppTest, on real tiny runs: the two finished runs are picked, a
compare job runs in the background to the end, and its table is drawn with error bars."""
import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from adversary_support import save_compared_runs
from reform_engine.jobs import ACTIVE
from reform_engine.store import Store

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
HANG_GUARD = 600  # seconds: only so a broken job cannot hang the suite; never a speed requirement


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    return save_compared_runs(tmp_path_factory.mktemp("compare-app"))


@pytest.fixture()
def env(runs, tmp_path, monkeypatch):
    project = tmp_path / "project"
    for name, value in {"REFORM_POLICY": runs["models"]["policy"], "REFORM_REWARD_MODEL": runs["base"],
                        "REFORM_PROJECT_DIR": str(project), "REFORM_DEVICE": "cpu", "REFORM_DATA": runs["models"]["data"]}.items():
        monkeypatch.setenv(name, value)
    for name in ("REFORM_ROWS", "REFORM_COMPARE_RM"):
        monkeypatch.delenv(name, raising=False)
    store = Store(project / "reform.duckdb")
    ids = {}
    for kind in ("pipeline", "adv-rounds"):  # the runs as the jobs that made them
        ids[kind] = store.add_job(kind, {}, str(runs["pipeline" if kind == "pipeline" else "rounds"]))
        store.update_job(ids[kind], state="succeeded")
    return {**runs, "db": project / "reform.duckdb", "ids": ids}


@pytest.fixture(scope="module", autouse=True)
def no_thread_outlives_the_tests():
    yield
    from reform_engine.background import wait_all
    wait_all()


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


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
    deadline = time.monotonic() + HANG_GUARD
    while store.get_job(job_id)["state"] in ACTIVE:
        assert time.monotonic() < deadline
        time.sleep(0.3)
        run(at)
    run(at)
    assert store.get_job(job_id)["state"] == "succeeded", store.get_job(job_id)["message"]
    checks = next(d.value for d in at.dataframe if "check" in d.value.columns)
    assert "same base RM" in checks["check"].tolist()
    charts = at.get("plotly_chart")
    assert len(charts) == 7  # success, efficiency, accuracy, drops, paired differences, cross-attacks; in the run
    loss = json.loads(charts[6].proto.spec)  # history, the loss curves of the reward models the job retrained
    assert loss["layout"]["title"]["text"].startswith("Training loss") and all(trace["y"] for trace in loss["data"])
    success = charts[0].proto.spec
    assert '"error_y"' in success and '"arrayminus"' in success  # every bar carries its interval
