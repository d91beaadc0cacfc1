"""The Recipe check page under AppTest: a crossval job started from the form runs in the background on a
tiny model, and its result is drawn: pooled accuracies with intervals, each fold a dot, a table per fold."""
import json

import pytest
from streamlit.testing.v1 import AppTest

from app_support import APP, app_env, no_thread_outlives_the_tests, run, until_job_ends  # noqa: F401 (a fixture)
from reform_engine.data import DEMO_PATH, load_preferences, write_jsonl
from reform_engine.store import Store
from reform_engine.tiny import save_tiny_model


@pytest.fixture()
def env(tmp_path, monkeypatch):
    data = tmp_path / "pairs.jsonl"
    write_jsonl(data, [p.to_trl() for p in load_preferences(DEMO_PATH).pairs[:16]])
    db = app_env(monkeypatch, tmp_path / "project", data=data,
                 policy=save_tiny_model(tmp_path / "policy", seed=1, ascii_only=True))
    return {"db": db, "data": str(data)}


def test_the_page_cross_validates_a_recipe_and_draws_each_fold_beside_the_pooled_intervals(env):
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/crossval.py")
    run(at)
    assert at.text_input(key="crossval_data").value == env["data"]
    at.number_input(key="crossval_folds").set_value(2)
    at.number_input(key="crossval_max_length").set_value(1024)   # the tiny byte tokenizer makes every text long
    at.selectbox(key="crossval_finetune").set_value("head")
    form_submit = next(b for b in at.button if "Cross-validate" in b.label)
    form_submit.click()
    run(at)
    store = Store(env["db"])
    job_id = int(store.list_jobs("crossval")["id"].iloc[0])
    assert any(f"Started crossval job #{job_id}" in s.value for s in at.success)
    config = store.get_job(job_id)["config"]
    assert config["folds"] == 2 and config["recipe"]["model"]["finetune"] == "head" and config["recipe"]["data"] == env["data"]
    job = until_job_ends(at, env["db"], job_id)
    assert job["state"] == "succeeded", job["message"]
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    bars, dots = figure["data"]
    assert bars["x"] == ["RM (the recipe)", "linear probe", "always longer", "always shorter"]
    assert "arrayminus" in bars["error_y"]                       # every bar carries its interval
    assert len(dots["x"]) == 8                                   # 2 folds x 4 models
    folds = next(d.value for d in at.dataframe if "held-out pairs" in d.value.columns)
    assert folds["fold"].tolist() == [0, 1] and folds["held-out pairs"].sum() == 16

    at.number_input(key="crossval_epochs").set_value(1)          # a second recipe on the same folds: the comparison
    next(b for b in at.button if "Cross-validate" in b.label).click()
    run(at)
    second = int(store.list_jobs("crossval")["id"].iloc[0])
    assert second != job_id and until_job_ends(at, env["db"], second)["state"] == "succeeded"
    assert at.selectbox(key="crossval_candidate").value == second and at.selectbox(key="crossval_default").value == job_id
    table = next(d.value for d in at.dataframe if "recipe" in d.value.columns)
    assert table["recipe"].tolist() == ["default", "candidate"] and table["pairs"].tolist() == [16, 16]
    line = next(m.value for m in at.markdown if "Candidate − default" in m.value)
    assert "on the 16 held-out pairs" in line and "epochs: 2 → 1" in line
