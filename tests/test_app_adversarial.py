"""The Adversarial attack page under AppTest, in process, on tiny models: an attack started from the
page runs as a real background job to the end, its curves and kept samples are drawn, and the samples
reach Curation; missing penalty and judge RMs are trained as jobs from the page."""
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from adversary_support import save_attack_models
from app_support import APP, app_env, job_progress, no_thread_outlives_the_tests, run, until_job_ends  # noqa: F401  (a fixture)
from reform_engine.jobs import cancel_job
from reform_engine.store import Store

PAGE = "pages/adversarial.py"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    return save_attack_models(tmp_path_factory.mktemp("adversarial-app"))


@pytest.fixture()
def env(models, tmp_path, monkeypatch):
    db = app_env(monkeypatch, tmp_path / "project", policy=models["policy"], reward_model=models["target"], data=models["data"])
    return {**models, "db": db}


def table(at: AppTest, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


def test_the_page_runs_a_tiny_attack_end_to_end_and_sends_its_samples_to_curation(env):
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page(PAGE)
    run(at)
    assert at.button(key="adversarial_start").disabled  # no penalty RMs yet
    at.text_area(key="adversarial_penalties").set_value(f"{env['penalty1']}\n{env['penalty2']}")
    at.text_input(key="adversarial_judge").set_value(env["judge"])
    for key, value in {"adversarial_prompts": 4, "adversarial_steps": 3, "adversarial_group": 2, "adversarial_max_tokens": 10,
                       "adversarial_lr": 1e-2, "adversarial_lora_layers": 1, "adversarial_base_samples": 4, "adversarial_fresh": 2,
                       "adversarial_threshold": -10.0, "adversarial_u_z": -10.0}.items():
        at.number_input(key=key).set_value(value)
    run(at)
    assert table(at, "found")["found"].tolist() == ["yes", "yes", "yes", "yes"]  # target, 2 penalties, judge
    at.button(key="adversarial_start").click()
    run(at)
    (job_id,) = Store(env["db"]).list_jobs()["id"].tolist()
    assert any(f"Started attack job #{job_id}" in s.value for s in at.success)
    assert job_progress(at) and f"job #{job_id} attack" in job_progress(at)[0]  # live progress while it runs
    job = until_job_ends(at, env["db"], job_id)
    assert job["state"] == "succeeded", job["message"]
    assert Store(env["db"]).get_job(job_id)["config"]["penalty_rms"] == f"{env['penalty1']},{env['penalty2']}"

    assert len(at.get("plotly_chart")) >= 2  # the step curves and the kept sample's token trace
    metrics = {m.label: m.value for m in at.metric}
    kept = table(at, "Z_t")
    assert int(metrics["Kept"]) == len(kept) > 0
    assert set(kept["curation"]) == {"pending"}  # ingested when the job ended: waiting in Curation
    stored = Store(env["db"]).list_variants(inversions_only=False, job_id=job_id)
    assert set(stored["direction"]) == {"adv-rm"} and len(stored) == len(kept)
    at.button(key="adversarial_send").click()
    run(at)
    assert any(f"{len(kept)} kept sample(s) of attack #{job_id} are in the Curation queue" in s.value for s in at.success)
    assert len(Store(env["db"]).list_variants(inversions_only=False)) == len(kept)  # sending again adds nothing

    at.switch_page("pages/curation.py")
    run(at)
    assert at.selectbox(key="curation_variant").value in stored["id"].tolist()
    assert any(f"Found by an Adv-RM attack (job #{job_id})" in c.value for c in at.caption)


def test_missing_penalty_and_judge_rms_are_trained_as_jobs_from_the_page(env):
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page(PAGE)
    run(at)
    button = at.button(key="adversarial_train")
    assert button.label == "Train 2 penalty RM(s) and a judge RM (background jobs)"
    button.click()
    run(at)
    store = Store(env["db"])
    jobs = store.list_jobs().sort_values("id")
    try:
        assert jobs["kind"].tolist() == ["train-rm"] * 3
        configs = jobs["config"].tolist()
        assert [(c["runtime"]["seed"], c["model"]["finetune"], c["train_sample"]) for c in configs] == [
            (1, "lora", 6), (2, "head", 6), (101, "lora", 6)]
        assert {c["model"]["base_model"] for c in configs} == {env["policy"]} and {c["data"] for c in configs} == {env["data"]}
        checkpoints = [str(Path(d) / "checkpoint") for d in jobs["run_dir"]]
        assert at.text_area(key="adversarial_penalties").value == "\n".join(checkpoints[:2])
        assert at.text_input(key="adversarial_judge").value == checkpoints[2]
        assert any("Started train-rm job(s)" in s.value for s in at.success)
        found = table(at, "found")
        assert found["role"].tolist() == ["target", "penalty 1", "penalty 2", "judge"]
        assert at.button(key="adversarial_start").disabled == (found["found"] != "yes").any()
    finally:
        for job_id in jobs["id"]:
            cancel_job(store, int(job_id), grace=5)


def test_the_page_starts_rounds_of_adversarial_training_and_shows_each_round(env):
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page(PAGE)
    run(at)
    at.text_area(key="adversarial_penalties").set_value(f"{env['penalty1']}\n{env['penalty2']}")
    at.text_input(key="adversarial_judge").set_value(env["judge"])
    for key, value in {"adversarial_prompts": 4, "adversarial_steps": 2, "adversarial_group": 2, "adversarial_max_tokens": 10,
                       "adversarial_lr": 1e-2, "adversarial_lora_layers": 1, "adversarial_base_samples": 4, "adversarial_fresh": 2,
                       "adversarial_threshold": -10.0, "adversarial_u_z": -10.0, "adversarial_rounds": 1,
                       "adversarial_confirm_repeat_times": 2}.items():
        at.number_input(key=key).set_value(value)
    at.toggle(key="adversarial_confirmed_only").set_value(False)
    at.toggle(key="adversarial_baseline_arm").set_value(True)
    at.multiselect(key="adversarial_rules").set_value(["repetition", "capitals"])
    run(at)
    at.number_input(key="adversarial_baseline_rounds").set_value(1)   # the lambda = 0 arm beside round 1's attack only
    at.text_input(key="adversarial_train_rows").set_value("0:6")  # the tiny target was not trained here
    run(at)
    at.button(key="adversarial_rounds_start").click()
    run(at)
    (job_id,) = Store(env["db"]).list_jobs()["id"].tolist()
    assert any(f"Started adv-rounds job #{job_id}" in s.value for s in at.success)
    config = Store(env["db"]).get_job(job_id)["config"]
    assert (config["rounds"], config["confirmed_only"], config["train_rows"], config["data"]) == (1, False, "0:6", env["data"])
    assert (config["baseline_arm"], config["baseline_rounds"]) == (True, 1)
    assert config["attack"]["confirm"]["rules"] == "repetition,capitals" and config["attack"]["confirm"]["repeat_times"] == 2
    job = until_job_ends(at, env["db"], job_id)
    assert job["state"] == "succeeded", job["message"]
    rounds = table(at, "pass_rate")
    assert rounds["round"].tolist() == [1, 1, 2] and rounds["target"].tolist() == ["base", "base", "round 1"]  # the final attack too
    assert rounds["arm"].tolist() == ["adv-rm", "lambda=0", "adv-rm"]
    assert table(at, "clean accuracy")["model"].tolist() == ["base", "round 1"]
