"""The score cache and the time left, seen from the pages (AppTest in process, tiny models): a restart
reads the data's scores from the store instead of scoring again, the variants job started from
Curation reuses the scores the app already has, and a job's progress bar says how long is left."""
import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app_support import settle, until_stored
from conftest import make_pair
from reform_engine import score_cache
from reform_engine.data import write_jsonl
from reform_engine.jobs import ACTIVE
from reform_engine.reward_model import RewardModelSpec, build_reward_model
from pages._draw import WAIT
from reform_engine.store import Store
from reform_engine.tiny import save_tiny_model

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
HANG_GUARD = 600  # seconds: only so a broken job cannot hang the suite; never a speed requirement
ASKS = ["Can you help me?", "What time is it?", "Tell me a fact.", "How do I cook rice?", "Where is Paris?", "Name a colour.",
        "What is 2+2?", "Say something nice."]
FROM_STORE = "Rewards read from the project store"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-scores")
    policy = str(save_tiny_model(root / "policy", seed=1, ascii_only=True))
    rm = build_reward_model(RewardModelSpec(base_model=policy, finetune="full", max_length=256), device="cpu", seed=3)
    data = root / "pairs.jsonl"
    write_jsonl(data, [make_pair(i, a, "Sure, happy to help.", "No. Go away!!").to_trl() for i, a in enumerate(ASKS)])
    return {"policy": policy, "rm": str(rm.save(root / "rm")), "data": str(data)}


@pytest.fixture()
def env(tiny, tmp_path, monkeypatch):
    project = tmp_path / "project"
    for name, value in {"REFORM_POLICY": tiny["policy"], "REFORM_REWARD_MODEL": tiny["rm"], "REFORM_PROJECT_DIR": str(project),
                        "REFORM_DEVICE": "cpu", "REFORM_DATA": tiny["data"], "REFORM_REVIEWER": "tester"}.items():
        monkeypatch.setenv(name, value)
    for name in ("REFORM_ROWS", "REFORM_COMPARE_RM", "REFORM_BACKUP_EVERY", "REFORM_BACKUP_KEEP", "REFORM_BACKUP_DIR"):
        monkeypatch.delenv(name, raising=False)
    restart()
    return {**tiny, "project": project, "db": project / "reform.duckdb"}


@pytest.fixture(scope="module", autouse=True)
def no_thread_outlives_the_tests():
    yield
    from reform_engine.background import wait_all
    wait_all()


def restart() -> None:
    """What a server restart forgets: every cached model, data set and scoring, and the file digests."""
    from pages import _scoring

    st.cache_resource.clear()
    st.cache_data.clear()
    _scoring._STARTED.clear()
    score_cache._DIGESTS.clear()


def losses(at: AppTest) -> list:
    return [m.value for m in at.metric]


def test_a_restarted_server_reads_the_scores_from_the_store_instead_of_scoring_again(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/influential.py")
    assert not any(FROM_STORE in c.value for c in at.caption)  # scored by the RM this time
    first = losses(at)
    assert len(first) > 0, "the page drew no losses: it was not scored"
    key = score_cache.score_key(env["rm"], env["data"], "", True, 1024)
    assert until_stored(lambda: Store(env["db"]).get_score_set(key.digest), "the score set")["n_pairs"] == 8
    restart()
    again = settle(AppTest.from_file(APP, default_timeout=120), "pages/influential.py")
    assert any(FROM_STORE in c.value for c in again.caption)
    assert losses(again) == first


def test_the_variants_job_from_curation_reuses_the_scores_the_app_already_has(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/influential.py")
    at = settle(at, "pages/curation.py")
    at.number_input(key="curation_gen_p").set_value(25.0)
    at.slider(key="curation_gen_k").set_value(2)
    at.slider(key="curation_gen_max_tokens").set_value(2)
    at.selectbox(key="curation_gen_directions").set_value("lower")
    at.button(key="curation_generate").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    store = Store(env["db"])
    (job_id,) = store.list_jobs()["id"].tolist()
    scored = Path(store.get_job(job_id)["config"]["scored"])
    assert scored.parent.parent == env["project"] / "scores" and scored.is_file()
    assert json.loads((scored.parent / score_cache.KEY_FILE).read_text())["max_length"] == 1024
    deadline = time.monotonic() + HANG_GUARD
    while (job := store.get_job(job_id))["state"] in ACTIVE:
        at.run()
        assert time.monotonic() < deadline, job["message"]
        time.sleep(0.3)
    assert job["state"] == "succeeded", job["message"]
    log = (Path(job["run_dir"]) / "log.txt").read_text()
    assert f"reusing the scores of {scored}" in log and "scoring again" not in log


def draw_one_job(db: str, job_id: int) -> None:
    from pages._jobs import draw_job
    from reform_engine.store import Store

    draw_job(Store(db).get_job(job_id), "t")


def test_a_running_job_shows_the_time_left_and_its_step_once(env, tmp_path):
    store = Store(env["db"])
    job_id = store.add_job("train-rm", {}, run_dir=str(tmp_path / "run"))
    started = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=600)
    store.update_job(job_id, state="running", step=5, total=20, progress=0.25, message="step 5/20 loss 0.412",
                     started_at=started)
    at = AppTest.from_function(draw_one_job, args=(str(env["db"]), job_id), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    (text,) = [el.proto.text for el in at.get("progress")]
    # 5 steps in 10 min (and the seconds this test took): 15 steps left, about 30 min
    assert re.fullmatch(re.escape(WAIT) + r" job #1 train-rm: step 5/20 loss 0\.412 · about 3\d min left", text), text
