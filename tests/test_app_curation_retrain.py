"""Curation, Retrain & evaluate, and the store/jobs wiring of Home and Controlled decoding: AppTest in
process on tiny models, with real background jobs (separate processes) where a page starts one."""
import json
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from app_support import APP, app_env, job_progress, no_thread_outlives_the_tests, settle, until_job_ends  # noqa: F401  (a fixture)
from conftest import make_pair
from pages._draw import WAIT
from reform_engine.data import load_preferences, write_jsonl
from reform_engine.decoding import DecodingResult, StepRecord
from reform_engine.influence import ScoredPair
from reform_engine.inversions import make_variant
from reform_engine.jobs import cancel_job
from reform_engine.reward_model import RewardModelSpec, build_reward_model
from reform_engine.runtime import Runtime
from reform_engine.store import Store
from reform_engine.tiny import save_tiny_model
from reform_engine.training import TrainRewardConfig, train_reward_model

ASKS = ["Can you help me?", "What time is it?", "Tell me a fact.", "How do I cook rice?", "Where is Paris?", "Name a colour.",
        "What is 2+2?", "Say something nice."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny ASCII policy, a tiny RM on it (untrained), a base RM trained here (its run has config.json),
    and a small preference file (8 pairs: rows 0-5 to train, 6-7 held out)."""
    root = tmp_path_factory.mktemp("app2-models")
    policy = str(save_tiny_model(root / "policy", seed=1, ascii_only=True))
    rm = build_reward_model(RewardModelSpec(base_model=policy, finetune="full", max_length=256), device="cpu", seed=3)
    data = root / "pairs.jsonl"
    write_jsonl(data, [make_pair(i, a, "Sure, happy to help.", "No. Go away!!").to_trl() for i, a in enumerate(ASKS)])
    base = TrainRewardConfig(data=str(data), train_rows="0:6",
                             model=RewardModelSpec(base_model=policy, finetune="lora", lora_r=2, lora_alpha=4, lora_layers=1,
                                                   max_length=128),
                             batch_size=4, max_steps=2, runtime=Runtime(device="cpu"), warmup_ratio=0.0)
    train_reward_model(base, root / "base-run")
    return {"policy": policy, "rm": str(rm.save(root / "rm")), "base": str(root / "base-run" / "checkpoint"), "data": str(data)}


@pytest.fixture()
def env(tiny, tmp_path, monkeypatch):
    project = tmp_path / "project"
    db = app_env(monkeypatch, project, policy=tiny["policy"], reward_model=tiny["rm"], data=tiny["data"], reviewer="tester")
    return {**tiny, "project": project, "db": db}


def table(at: AppTest, column: str):
    """The first dataframe on the page with ``column`` (AppTest does not expose a dataframe's key)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def decisions(db: Path) -> list[tuple]:
    """The decisions table, read with a raw DuckDB connection: what is in the file, not in a session."""
    con = duckdb.connect(str(db))
    try:
        return con.execute("SELECT variant_id, decision, edited_text, note FROM decisions ORDER BY id").fetchall()
    finally:
        con.close()


def variant_record(i: int, direction: str, r_variant: float, text: str) -> dict:
    """A real Variant.to_record(): pair i (r+ = 2.0, r- = 0.5), three decoding steps, the last one EOS."""
    source = ScoredPair(make_pair(i, ASKS[i], "Sure, happy to help.", "No. Go away!!"), 2.0, 0.5, 0.2, 1)
    steps = [StepRecord(s, [40, 2], ["Ok", "<|im_end|>"], [-0.1, -2.0], [0.3, 0.1], [0.0, 0.0], c, [40, 2][c], ["Ok", ""][c],
                        [0.3, -0.4, -0.4][s], c == 1) for s, c in enumerate([0, 0, 1])]
    result = DecodingResult(source.pair.prompt, direction, "shared", [40, 40], text, steps, r_variant, 3.0, "eos")
    return make_variant(source, result, r_variant).to_record()


# ------------------------------------------------------------------ curation

def test_curation_lists_stored_inversions_and_writes_every_decision_to_the_database(env):
    store = Store(env["db"])
    low, high = store.add_variants([variant_record(0, "lower", -1.0, "Ok Ok"), variant_record(1, "raise", 3.0, "Whatever.")])
    job = store.add_job("variants", {})
    (miss,) = store.add_variants([variant_record(2, "lower", 1.0, "Not low enough.")], job_id=job)  # filtered out

    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/curation.py")
    assert {m.label: m.value for m in at.metric}["Waiting"] == "2"
    assert at.selectbox(key="curation_variant").options == [f"#{low} · t:0 · lower", f"#{high} · t:1 · raise"]
    assert table(at, "persona")["persona"].tolist() == ["none", "none"]  # decoded without a persona of ours
    assert any("**Variant** (lower, persona none)" in md.value for md in at.markdown)
    codes = [c.value for c in at.code]
    assert "Sure, happy to help." in codes and "No. Go away!!" in codes and "Ok Ok" in codes
    assert len(at.get("plotly_chart")) == 1  # the variant's running reward while decoding
    assert any("It adds the pair" in md.value for md in at.markdown)
    assert any("“Ok Ok” ≻ rejected = “No. Go away!!”" in t.value for t in at.text)  # data drawn as text, not markdown

    at.text_input(key="curation_note").set_value("fluent, and the RM ranks it below the rude answer")
    at.button(key="curation_approve").click()
    at = settle(at)
    assert decisions(env["db"]) == [(low, "approve", None, "fluent, and the RM ranks it below the rude answer")]
    assert any(f"Approved variant #{low} as tester." in s.value for s in at.success)
    assert at.selectbox(key="curation_variant").value == high  # the next one waiting

    # bad edits are refused on the page and write nothing
    at.text_area(key="curation_text").set_value("Sure, happy to help.")  # the chosen side of a "raise" pair
    at.button(key="curation_approve").click()
    at = settle(at)
    assert any("Not stored" in e.value and "equals the other response" in e.value for e in at.error)
    at.text_area(key="curation_text").set_value("   ")
    at.button(key="curation_approve").click()
    at = settle(at)
    assert any("edited_text is empty" in e.value for e in at.error) and len(decisions(env["db"])) == 1

    at.text_area(key="curation_text").set_value("Whatever. Go away.")
    at.text_input(key="curation_note").set_value("made it plainly worse")
    at.button(key="curation_approve").click()
    at = settle(at)
    assert decisions(env["db"])[-1] == (high, "edit", "Whatever. Go away.", "made it plainly worse")
    assert any("Nothing here" in i.value for i in at.info)

    # the filtered-out variant: shown on request, only to be rejected
    at.selectbox(key="curation_status").set_value("all")
    at.toggle(key="curation_every").set_value(True)
    at = settle(at)
    at.selectbox(key="curation_variant").set_value(miss)
    at = settle(at)
    assert at.button(key="curation_approve").disabled and any("Not an inversion" in w.value for w in at.warning)
    at.button(key="curation_reject").click()
    at = settle(at)
    assert decisions(env["db"])[-1] == (miss, "reject", None, "")

    at.button(key="curation_export").click()
    at = settle(at)
    (path,) = (env["project"] / "exports").glob("approved-*.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"prompt": [{"role": "user", "content": ASKS[0]}], "chosen": "Ok Ok", "rejected": "No. Go away!!"},
        {"prompt": [{"role": "user", "content": ASKS[1]}], "chosen": "Sure, happy to help.", "rejected": "Whatever. Go away."}]
    assert any("2 approved pair(s) written" in s.value for s in at.success)


def test_curation_shows_the_verdict_flags_and_keeps_not_fluent_variants_out_of_the_queue(env):
    def judged(i: int, text: str, perplexity: float, stopped: str = "eos") -> dict:  # past r- = 0.5 by 1.5
        source = ScoredPair(make_pair(i, ASKS[i], "Sure, happy to help.", "No. Go away!!"), 2.0, 0.5, 0.2, 1)
        result = DecodingResult(source.pair.prompt, "lower", "shared", [40, 41, 42], text, [], -1.0, perplexity, stopped)
        return make_variant(source, result, -1.0, plain_perplexity=2.5).to_record()

    store = Store(env["db"])
    job = store.add_job("variants", {})
    gibberish, cut = store.add_variants([judged(0, "Hagai H.Pomoderitametakomoronit", 63.75),
                                         judged(1, "Well, you could", 4.0, "max_new_tokens")], job_id=job)
    (old,) = store.add_variants([{k: v for k, v in variant_record(2, "lower", -1.0, "Ok Ok").items()
                                  if k not in ("fluent", "truncated", "plain_perplexity", "persona")}])  # as stored before the flags

    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/curation.py")
    assert {m.label: m.value for m in at.metric}["Waiting"] == "2"  # the not-fluent one is not queued
    assert table(at, "flags")[["id", "flags", "persona"]].values.tolist() == [[cut, "truncated", "none"],
                                                                              [old, "fluency unknown, truncation unknown", "unknown"]]
    assert at.selectbox(key="curation_variant").value == cut
    assert any("**Truncated**: cut mid-sentence at the token limit" in w.value for w in at.warning)
    assert not at.button(key="curation_approve").disabled  # truncated is a flag, still an inversion
    at.selectbox(key="curation_variant").set_value(old)
    at = settle(at)
    assert any("Fluency unknown" in c.value for c in at.caption) and not at.exception

    at.toggle(key="curation_every").set_value(True)
    at = settle(at)
    assert table(at, "flags").set_index("id")["flags"][gibberish] == "not fluent"
    at.selectbox(key="curation_variant").set_value(gibberish)
    at = settle(at)
    assert any("Not a true inversion" in e.value and "the policy finds it not fluent" in e.value for e in at.error)
    assert any("**Not fluent**: perplexity 63.75, 25.5× the plain policy's 2.50" in w.value for w in at.warning)
    assert at.button(key="curation_approve").disabled


def test_curation_flags_a_variant_whose_source_pair_the_rm_already_orders_wrong(env):
    store = Store(env["db"])
    (wrong,) = store.add_variants([{**variant_record(3, "raise", 3.0, "Fine, here it is."), "r_chosen": 0.4, "r_rejected": 0.9}],
                                  job_id=store.add_job("variants", {}))
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/curation.py")
    assert at.selectbox(key="curation_variant").value == wrong
    assert table(at, "flags").set_index("id")["flags"][wrong] == "fluency unknown, ordered wrong"  # no plain-policy reference here
    assert any("**Source pair already ordered wrong**: the RM scores its chosen response 0.400, not above its rejected one "
               "(0.900)" in w.value for w in at.warning)


def test_curation_runs_batch_generation_as_a_background_job(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/curation.py")
    at.number_input(key="curation_gen_p").set_value(25.0)  # 2 of the 8 pairs
    at.slider(key="curation_gen_k").set_value(2)
    at.slider(key="curation_gen_max_tokens").set_value(3)
    at.selectbox(key="curation_gen_raise_persona").set_value("none")
    at.number_input(key="curation_gen_per_pair").set_value(2)
    at.button(key="curation_generate").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (job,) = Store(env["db"]).list_jobs()["id"].tolist()
    assert any(f"Started job #{job}" in s.value for s in at.success)
    assert job_progress(at) and f"job #{job} variants" in job_progress(at)[0]  # live progress while it runs
    ended = until_job_ends(at, env["db"], job)
    assert ended["state"] == "succeeded", ended["message"]
    stored = Store(env["db"]).list_variants(inversions_only=False, job_id=job)
    dropped = json.loads(Path(ended["result_path"]).read_text())["stats"]["duplicates"]
    assert len(stored) + dropped == 8 and set(stored["direction"]) == {"lower", "raise"}  # 2 pairs x 2 directions x 2, ingested
    assert dict(stored.groupby("direction")["persona"].unique().map(list)) == {"lower": ["aligned"], "raise": ["none"]}
    assert {m.label: m.value for m in at.metric}["Waiting"] == str(int(stored["is_inversion"].sum()))
    assert not job_progress(at)


def test_decoding_page_sends_the_variant_to_the_store(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/decoding.py")
    at.slider(key="decoding_k").set_value(2)
    at.slider(key="decoding_max_tokens").set_value(3)
    at.checkbox(key="decoding_compare").set_value(False)
    at.selectbox(key="decoding_persona").set_value("aligned")
    at.button(key="decoding_run").click()
    at = settle(at)
    v = at.session_state["decoding_last"]["variant"]
    assert v.persona == "aligned" and any(c.value.startswith("persona=aligned · k=2") for c in at.caption)
    at.button(key="decoding_send").click()
    at = settle(at)
    assert any("Queued for curation (1 waiting)." in s.value for s in at.success)
    stored = Store(env["db"]).list_variants(inversions_only=False)
    assert stored[["pair_id", "direction", "text", "is_inversion", "persona"]].values.tolist() == \
        [[v.pair_id, "lower", v.text, v.is_inversion, "aligned"]]
    assert len(Store(env["db"]).get_variant(int(stored["id"][0]))["steps"]) == len(v.steps)
    # the partial-reward proxy over every stored variant: one variant, too few for a correlation at any step
    at.toggle(key="decoding_proxy_show").set_value(True)
    at = settle(at)
    proxy = next(f for f in (json.loads(c.proto.spec) for c in at.get("plotly_chart"))
                 if f["layout"].get("title", {}).get("text", "").startswith("Partial reward"))
    tokens = len([x for x in v.steps if not x.is_eos])
    assert proxy["data"][0]["y"] == [1] * tokens and proxy["data"][1]["y"] == [None] * tokens
    at.button(key="decoding_send").click()  # again: still one row
    at = settle(at)
    assert len(Store(env["db"]).list_variants(inversions_only=False)) == 1
    at = settle(at, "pages/curation.py")  # another page of the same session finds it in the queue
    assert at.selectbox(key="curation_variant").value == int(stored["id"][0])


# ------------------------------------------------------------------ home: the base RM as a job

def test_home_trains_a_base_rm_in_the_background_when_there_is_none(env, monkeypatch, tmp_path):
    monkeypatch.setenv("REFORM_REWARD_MODEL", str(tmp_path / "no-rm-yet"))
    at = settle(AppTest.from_file(APP, default_timeout=120))
    # a split by default: the first 80% of the 8 pairs to train on, the rest held out
    assert (at.text_input(key="home_train_rows").value, at.text_input(key="home_train_held").value) == ("0:6", "6:8")
    at.number_input(key="home_train_lora_layers").set_value(1)
    at.number_input(key="home_train_max_steps").set_value(2)
    at.number_input(key="home_train_batch").set_value(4)
    at.number_input(key="home_train_max_length").set_value(128)
    at.button(key="home_train").click()
    at.run()
    (job,) = Store(env["db"]).list_jobs()["id"].tolist()
    assert job_progress(at) and f"job #{job} train-rm" in job_progress(at)[0]
    ended = until_job_ends(at, env["db"], job)
    assert ended["state"] == "succeeded", ended["message"]
    checkpoint = env["project"].resolve() / "runs" / "base-rm" / "checkpoint"
    at = settle(at)
    assert at.session_state["app_settings"].reward_model == str(checkpoint)
    assert "RM accuracy" in {m.label for m in at.metric}  # the new RM scored the data
    config = json.loads((checkpoint.parent / "config.json").read_text())
    assert (config["train_rows"], config["eval_rows"]) == ("0:6", "6:8")
    assert any(md.value.startswith("**Held-out accuracy**") for md in at.markdown)


def test_home_refuses_a_bad_training_knob_on_the_page(env, monkeypatch, tmp_path):
    monkeypatch.setenv("REFORM_REWARD_MODEL", str(tmp_path / "no-rm-yet"))
    at = settle(AppTest.from_file(APP, default_timeout=120))
    at.text_input(key="home_train_held").set_value("4:")
    at.button(key="home_train").click()
    at = settle(at)
    assert any("Not started: the held-out rows 4: overlap the training rows 0:6 (rows 4:6)" in e.value for e in at.error)
    at.text_input(key="home_train_rows").set_value("first half")
    at.button(key="home_train").click()
    at = settle(at)
    assert any("Not started" in e.value and "start:end" in e.value for e in at.error)
    assert Store(env["db"]).list_jobs().empty


# ------------------------------------------------------------------ retrain & evaluate

def test_retrain_page_retrains_on_approved_pairs_and_charts_base_vs_retrained(env, monkeypatch):
    monkeypatch.setenv("REFORM_REWARD_MODEL", env["base"])
    store = Store(env["db"])
    ids = store.add_variants([variant_record(0, "lower", -1.0, "Ok, here you go."), variant_record(1, "raise", 3.0, "Meh.")])
    for i in ids:
        store.decide(i, "approve")
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/retrain.py")
    assert {m.label: m.value for m in at.metric}["Approved pairs"] == "2"
    assert at.text_input(key="retrain_eval_rows").value == "6:"  # held out: the rows after the base's 0:6
    at.multiselect(key="retrain_perturbations").set_value(["verbosity", "capitalization"])
    at.text_input(key="retrain_base").set_value("/no/such/rm")
    at.button(key="retrain_start").click()
    at = settle(at)
    assert any("Not started: no reward model at /no/such/rm" in e.value for e in at.error) and store.list_jobs().empty

    at.text_input(key="retrain_base").set_value(env["base"])
    at.text_input(key="retrain_eval_rows").set_value("4:")  # the base was trained on 0:6
    at = settle(at)
    assert any("overlap the base RM's training rows `0:6` (rows `4:6`)" in w.value for w in at.warning)
    at.button(key="retrain_start").click()
    at = settle(at)
    assert any("Not started: the held-out rows 4: of" in e.value and "e.g. '6:'" in e.value for e in at.error)
    assert store.list_jobs().empty
    at.text_input(key="retrain_eval_rows").set_value("6:")
    at.button(key="retrain_start").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (job,) = store.list_jobs()["id"].tolist()
    assert job_progress(at) and f"job #{job} retrain" in job_progress(at)[0]
    ended = until_job_ends(at, env["db"], job)
    assert ended["state"] == "succeeded", ended["message"]
    (augment,) = (env["project"] / "curated").glob("approved-*.jsonl")
    assert len(load_preferences(str(augment)).pairs) == 2

    assert len(at.get("plotly_chart")) == 3  # clean accuracy; win-rate drop per perturbation; the job's loss curve
    loss = json.loads(at.get("plotly_chart")[2].proto.spec)["data"]
    trained = json.loads((Path(ended["run_dir"]) / "retrain" / "metrics.json").read_text())["loss_curve"]
    assert [t["name"] for t in loss] == ["retrain: every step", "retrain"] and loss[0]["y"] == trained and len(trained) > 0
    summary = table(at, "clean_accuracy")
    assert summary["label"].tolist() == [f"#{job} base", f"#{job} retrained"]
    report = json.loads((Path(ended["run_dir"]) / "report.json").read_text())
    assert summary["clean_accuracy"].tolist() == [r["clean_accuracy"] for r in report["summary"]]
    ci = report["models"][1]["intervals"]["clean_accuracy"]   # each value with its 95% interval, in the table and as error bars
    assert summary["clean_accuracy 95% CI"].tolist()[1] == f"[{ci['low']:.3f}, {ci['high']:.3f}]"
    assert summary["n_pairs"].tolist() == [report["models"][0]["n_pairs"]] * 2 and report["models"][0]["n_pairs"] > 0
    accuracy = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert accuracy["error_y"]["array"][1] == pytest.approx(ci["high"] - ci["estimate"])
    assert {r["perturbation"] for r in report["drops"]} == {"verbosity", "capitalization"}
    assert table(at, "minutes")["kind"].tolist() == ["retrain"]
    assert any("==> log.txt <==" in c.value and "stage retrain" in c.value for c in at.code)  # the job's log tail
    assert report["models"][1]["checkpoint"] == str(Path(ended["run_dir"]) / "retrain" / "checkpoint")  # where the page's numbers come from
    # one report per run: a row per arm, its values with their intervals and the spurious indicators, and as Markdown
    arms = table(at, "clean accuracy [95% CI]")
    assert arms["arm"].tolist() == ["base", "retrained"] and arms["run"].tolist() == [f"#{job} retrain"] * 2
    assert arms["added pairs"].tolist() == ["0", "2"]
    assert arms["clean accuracy [95% CI]"][1] == f"{report['models'][1]['clean_accuracy']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"
    assert arms["extreme-negative share"].tolist() == [f"{m['indicators']['extreme_negative_share']:.3f}" for m in report["models"]]
    assert arms["BoN win vs base [95% CI] (prompts; same pick)"].tolist() == ["—", "—"]   # no best-of-N run yet
    assert any(c.value.startswith("| run | arm | added pairs | held-out pairs |") for c in at.code)


def test_retrain_page_refuses_a_best_of_n_whose_judge_is_one_of_the_compared_rms_and_lists_finished_ones(env, tmp_path):
    store = Store(env["db"])
    run = tmp_path / "bon-run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({  # a finished best-of-n run's result file (best_of_n.BestOfNResult)
        "rm_a": env["base"], "rm_b": env["rm"], "judge_rm": "/rms/judge", "n": 8, "prompts": 40, "skipped": 1,
        "win_rate": 0.5625, "low": 0.45, "high": 0.675, "wins": 20, "losses": 15, "ties": 5, "same_pick": 3}))
    finished = store.add_job("best-of-n", {}, str(run))
    store.update_job(finished, state="succeeded", progress=1.0, message="done")
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/retrain.py")
    bon = table(at, "same_pick")
    assert bon[["rm_a", "rm_b", "judge", "prompts", "win_rate", "95% CI", "same_pick"]].values.tolist() == [
        ["base-run", "rm", "judge", 40, 0.5625, "[0.450, 0.675]", 3]]
    assert at.text_input(key="bon_rm_a").value == env["rm"] and at.number_input(key="bon_n").value == 8
    at.text_input(key="bon_rm_b").set_value(env["base"])
    at.text_input(key="bon_judge").set_value("/no/such/judge")
    at.button(key="bon_start").click()
    at = settle(at)
    assert any("Not started: no reward model at /no/such/judge" in e.value for e in at.error)
    at.text_input(key="bon_judge").set_value(env["rm"])
    at.button(key="bon_start").click()
    at = settle(at)
    assert any("Not started" in e.value and "the judge is RM A or RM B" in e.value for e in at.error)
    assert Store(env["db"]).list_jobs()["id"].tolist() == [finished]


def test_retrain_page_starts_and_cancels_a_pipeline(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/retrain.py")
    assert at.button(key="retrain_start").disabled  # nothing approved yet
    at.text_input(key="pipeline_train_rows").set_value("0:6")
    at.text_input(key="pipeline_eval_rows").set_value("6:")
    at.multiselect(key="pipeline_perturbations").set_value(["verbosity"])
    at.slider(key="pipeline_k").set_value(2)
    at.button(key="pipeline_start").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (job,) = Store(env["db"]).list_jobs()["id"].tolist()
    config = Store(env["db"]).get_job(job)["config"]
    assert (config["base"]["train_rows"], config["eval_rows"], config["variants"]["decoding"]["k"],
            config["robustness"]["perturbations"]) == ("0:6", "6:", 2, "verbosity")
    assert config["base"]["model"]["base_model"] == env["policy"] and config["base_rm"] == ""
    at.button(key=f"retrain_cancel_{job}").click()
    at.run()
    at.button(key=f"retrain_cancel_yes_{job}").click()  # Cancel asks first
    at.run()
    assert Store(env["db"]).get_job(job)["state"] == "cancelled" and not job_progress(at)
    assert table(at, "minutes")["state"].tolist() == ["cancelled"]
    at.button(key="retrain_history_resume").click()  # the cancelled job again, in its own run directory
    at.run()
    store = Store(env["db"])
    resumed = max(store.list_jobs()["id"].tolist())
    again, before = store.get_job(resumed), store.get_job(job)
    assert (again["rerun_of"], again["run_dir"], again["config"]) == (job, before["run_dir"], before["config"])
    assert cancel_job(store, resumed, grace=5)["state"] == "cancelled"

    at.text_input(key="robustness_rm").set_value("/no/such/rm")
    at.button(key="robustness_start").click()
    at.run()
    assert any("Not started: no reward model at /no/such/rm" in e.value for e in at.error)
    at.text_input(key="pipeline_train_rows").set_value("six")
    at.button(key="pipeline_start").click()
    at.run()
    assert any("Not started" in e.value and "start:end" in e.value for e in at.error)
    assert len(Store(env["db"]).list_jobs()) == 2 and not at.exception  # the pipeline and its resumption


def test_retrain_page_starts_a_pipeline_with_its_personas_appropriateness_ablations_and_best_of_n(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/retrain.py")
    assert at.checkbox(key="pipeline_filter_inappropriate").disabled and at.checkbox(key="pipeline_ablate_no_aug").disabled
    at.text_input(key="pipeline_train_rows").set_value("0:6")
    at.text_input(key="pipeline_eval_rows").set_value("6:")
    at.multiselect(key="pipeline_perturbations").set_value(["verbosity"])
    at.number_input(key="pipeline_per_pair").set_value(3)
    at.selectbox(key="pipeline_lower_persona").set_value("none")
    at.selectbox(key="pipeline_appropriateness").set_value("judge")
    at.text_input(key="pipeline_appropriateness_judge").set_value(env["rm"])
    at.checkbox(key="pipeline_ablate_highest_loss").set_value(True)
    at.checkbox(key="pipeline_ablate_equal").set_value(True)
    at.checkbox(key="pipeline_ablate_ordered").set_value(True)
    at.checkbox(key="pipeline_ablate_mode").set_value(True)
    at = settle(at)
    assert not at.checkbox(key="pipeline_filter_inappropriate").disabled and not at.checkbox(key="pipeline_ablate_no_aug").disabled
    at.checkbox(key="pipeline_filter_inappropriate").set_value(True)
    at.checkbox(key="pipeline_ablate_appropriateness").set_value(True)
    at.text_input(key="pipeline_bon_judge").set_value("/no/such/judge")
    at.button(key="pipeline_start").click()
    at = settle(at)
    assert any("Not started: no reward model at /no/such/judge" in e.value for e in at.error)
    at.text_input(key="pipeline_bon_judge").set_value(env["base"])
    at.number_input(key="pipeline_bon_prompts").set_value(2)
    at.number_input(key="pipeline_bon_n").set_value(4)
    at.button(key="pipeline_start").click()
    at = settle(at)
    (job,) = Store(env["db"]).list_jobs()["id"].tolist()
    config = Store(env["db"]).get_job(job)["config"]
    variants = config["variants"]
    assert (variants["variants_per_pair"], variants["lower_persona"], variants["raise_persona"]) == (3, "none", "compliant")
    assert variants["appropriateness"]["source"] == "judge" and variants["appropriateness"]["judge_rm"] == env["rm"]
    assert {k: config[k] for k in ("filter_inappropriate", "ablate_appropriateness", "ablate_random", "ablate_highest_loss",
                                   "ablate_retrain_mode", "ablate_no_augment", "ablate_equal_count", "ablate_ordered")} == {
        "filter_inappropriate": True, "ablate_appropriateness": True, "ablate_random": True, "ablate_highest_loss": True,
        "ablate_retrain_mode": True, "ablate_no_augment": True, "ablate_equal_count": True, "ablate_ordered": True}
    assert (config["retrain"]["mode"], config["bon_judge_rm"], config["bon_prompts"], config["bon_n"]) == ("scratch", env["base"], 2, 4)
    at.button(key=f"retrain_cancel_{job}").click()
    at.run()
    at.button(key=f"retrain_cancel_yes_{job}").click()
    at.run()
    assert Store(env["db"]).get_job(job)["state"] == "cancelled"


def test_two_tabs_deciding_at_once_lose_nothing(env):
    store = Store(env["db"])
    first, second = store.add_variants([variant_record(0, "lower", -1.0, "Ok Ok"), variant_record(1, "raise", 3.0, "Whatever.")])
    tabs = [settle(AppTest.from_file(APP, default_timeout=120), "pages/curation.py") for _ in range(2)]
    tabs[1].selectbox(key="curation_variant").set_value(second)
    tabs[1] = settle(tabs[1])
    tabs[0].button(key="curation_approve").click()   # tab 0 approves the first
    tabs[1].button(key="curation_reject").click()    # tab 1, drawn before that, rejects the second
    tabs = [settle(t) for t in tabs]
    assert decisions(env["db"]) == [(first, "approve", None, ""), (second, "reject", None, "")]
    # tab 0 still shows the second as pending; its decision lands after tab 1's and says so
    assert tabs[0].selectbox(key="curation_variant").value == second
    tabs[0].text_input(key="curation_note").set_value("on second thought, fine")
    tabs[0].button(key="curation_approve").click()
    tabs[0] = settle(tabs[0])
    assert any("It had been rejected meanwhile in another tab" in s.value for s in tabs[0].success)
    assert [h["decision"] for h in store.get_variant(second)["history"]] == ["reject", "approve"]
    assert store.get_variant(second)["status"] == "approved"


# ------------------------------------------------------------------ who decided, the decision log, a damaged database

def test_curation_asks_for_a_reviewer_name_and_stores_it_with_each_decision(env, monkeypatch):
    monkeypatch.delenv("REFORM_REVIEWER")
    store = Store(env["db"])
    first, second = store.add_variants([variant_record(0, "lower", -1.0, "Ok Ok"), variant_record(1, "raise", 3.0, "Whatever.")])
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/curation.py")
    assert at.text_input(key="app_reviewer").value == ""
    assert at.button(key="curation_approve").disabled and at.button(key="curation_reject").disabled
    assert any("Give your name as **Reviewer** in the sidebar" in w.value for w in at.warning)
    at.text_input(key="app_reviewer").set_value("Ada")
    at = settle(at)
    at.button(key="curation_approve").click()
    at = settle(at)
    at.text_input(key="app_reviewer").set_value("Bo")
    at.button(key="curation_reject").click()
    at = settle(at)
    assert [(h["decision"], h["reviewer"]) for v in (first, second) for h in store.get_variant(v)["history"]] == [
        ("approve", "Ada"), ("reject", "Bo")]
    assert any(f"Rejected variant #{second} as Bo." in s.value for s in at.success)

    at.radio(key="curation_log_format").set_value("jsonl")
    at.button(key="curation_log_export").click()
    at = settle(at)
    (path,) = (env["project"] / "exports").glob("decisions-*.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["variant_id"], r["decision"], r["reviewer"]) for r in rows] == [(first, "approve", "Ada"), (second, "reject", "Bo")]
    assert any("2 decision(s) written" in s.value for s in at.success)


def test_the_reviewer_name_comes_from_the_environment(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/curation.py")
    assert at.text_input(key="app_reviewer").value == "tester"


def approve_with_snapshots(db: Path, n: int) -> list[int]:
    """n approved variants in a store snapshotting every 4 decisions."""
    from reform_engine.backups import BackupConfig

    store = Store(db, backup=BackupConfig(every=4))
    ids = store.add_variants([variant_record(i % len(ASKS), "lower", -1.0, f"Ok {i}") for i in range(n)])
    for i in ids:
        store.decide(i, "approve", reviewer="tester")
    return ids


def cut_in_half(path: Path) -> bytes:
    data = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(data)
    return data


def garbage_over_blocks(path: Path) -> bytes:
    """4 KiB of garbage at the start of every storage block after the first (the catalog): it still opens."""
    data = bytearray(path.read_bytes())
    for block in range(12_288 + 262_144, len(data), 262_144):
        data[block:block + 4096] = bytes((i * 7919 + 13) % 256 for i in range(4096))
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("damage", [cut_in_half, garbage_over_blocks])
def test_a_damaged_database_shows_the_recovery_page_and_a_restore_brings_the_decisions_back(env, damage):
    approve_with_snapshots(env["db"], 9)  # snapshots after decisions 4 and 8
    broken = damage(env["db"])
    for page in ("pages/curation.py", "pages/home.py", "pages/retrain.py"):
        at = settle(AppTest.from_file(APP, default_timeout=120), page)  # settle: no exception, sidebar included
        assert at.title[0].value == "The project database cannot be read"
        assert any(str(env["db"].resolve()) in md.value and "Nothing has been deleted" in md.value for md in at.markdown)
        assert any("The project database cannot be read." in c.value for c in at.sidebar.caption)
        assert len(at.dataframe[0].value) == 2 and any("reform_engine restore --db" in c.value for c in at.code)
    at.button(key="app_recovery_restore").click()
    at = settle(at)
    assert at.title[0].value == "Retrain & evaluate"
    assert any("Restored the project database from" in s.value and "The damaged file is kept at" in s.value for s in at.success)
    (kept,) = env["project"].glob("reform.duckdb.replaced-*")
    assert kept.read_bytes() == broken
    assert len(Store(env["db"]).list_variants(decision="approved")) == 8  # as of the newest snapshot
    at = settle(at, "pages/curation.py")
    assert {m.label: m.value for m in at.metric}["Approved"] == "8"


def test_a_fresh_start_keeps_the_damaged_file_aside(env):
    approve_with_snapshots(env["db"], 3)  # no snapshot yet
    broken = cut_in_half(env["db"])
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/curation.py")
    assert any("There are no snapshots of this database" in i.value for i in at.info)
    at.button(key="app_recovery_fresh").click()
    at = settle(at)
    (kept,) = env["project"].glob("reform.duckdb.broken-*")
    assert kept.read_bytes() == broken
    assert at.title[0].value == "Curation" and {m.label: m.value for m in at.metric}["Waiting"] == "0"
    assert any("Started a fresh, empty project database" in s.value for s in at.success)


def test_a_count_that_fails_is_a_message_in_the_sidebar_not_a_crash(env):
    Store(env["db"])
    con = duckdb.connect(str(env["db"]))
    con.execute("DROP TABLE decisions")  # every count of the queue now fails, the file itself is sound
    con.close()
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/curation.py")
    assert any(c.value.startswith("Curation queue unavailable: the project database") for c in at.sidebar.caption)
    assert any(e.value.startswith("Project database: the project database") and "CatalogException" in e.value for e in at.error)


def test_a_queued_job_shows_its_place_in_the_queue_and_is_cancelled_only_once_confirmed(env, monkeypatch, tmp_path):
    monkeypatch.setenv("REFORM_MAX_JOBS", "1")
    store = Store(env["db"])
    busy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # the one slot is taken
    running = store.add_job("robustness", {"reward_model": env["rm"]}, str(tmp_path / "busy"))
    store.update_job(running, state="running", pid=busy.pid, message="scoring")
    queued = store.add_job("robustness", {"reward_model": env["rm"]}, str(tmp_path / "next"), state="queued")
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/retrain.py")
    assert job_progress(at) == [f"{WAIT} job #{running} robustness: scoring",
                                f":material/schedule: job #{queued} robustness: queued, number 1 in the queue; it starts when a slot frees "
                                "(1 job at a time, REFORM_MAX_JOBS)"]
    at.button(key=f"retrain_cancel_{queued}").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    asking = [w.value for w in at.warning if w.value.startswith(f"Cancel job #{queued} (robustness)?")]
    assert len(asking) == 1 and store.get_job(queued)["state"] == "queued"  # a question first, nothing cancelled yet
    at.button(key=f"retrain_cancel_no_{queued}").click()
    at.run()
    assert store.get_job(queued)["state"] == "queued" and not [w for w in at.warning if w.value.startswith("Cancel job")]
    at.button(key=f"retrain_cancel_{queued}").click()
    at.run()
    at.button(key=f"retrain_cancel_yes_{queued}").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert store.get_job(queued)["state"] == "cancelled" and store.get_job(running)["state"] == "running"
    assert job_progress(at) == [f"{WAIT} job #{running} robustness: scoring"]
    busy.kill()
    busy.wait()


def test_a_jobs_details_show_its_trunk_cache_on_disk_and_its_log_lines(env, tmp_path):
    import json

    run = tmp_path / "cached-run"
    ns = run / "trunk_cache" / "0123abcd"
    ns.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"runtime": {"trunk_cache": "auto"}}))
    (ns / "meta.json").write_text(json.dumps({"split": 22, "layers": 30}))
    (ns / "part-1-a.idx").write_bytes(b"r" * 32 * 4)
    (ns / "part-1-a.bin").write_bytes(b"s" * 3 * 2**20)
    (run / "log.txt").write_text("2026-01-01 00:00:00 trunk cache: 7 hits, 4 misses; 4 entries, 3.0 MB\n")
    store = Store(env["db"])
    job = store.add_job("pipeline", {}, str(run))
    store.update_job(job, state="succeeded", progress=1.0, message="done")
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/retrain.py")
    assert at.selectbox(key="retrain_history_job").value == job
    [panel] = [e for e in at.expander if e.label.startswith("Trunk cache")]
    assert panel.label == "Trunk cache: 3 MB on disk"
    assert panel.dataframe[0].value[["trunk", "cached_layers", "entries"]].values.tolist() == [["0123abcd", "0-21 of 30", 4]]
    assert "7 hits, 4 misses" in panel.code[0].value


def test_a_run_made_outside_the_app_is_added_from_the_run_history(env, tmp_path):
    from reform_engine.robustness import RobustnessConfig
    from reform_engine.runs import RunDir

    run = tmp_path / "cli-robustness"
    RunDir(run).write_config(RobustnessConfig(reward_model=env["rm"], perturbations="verbosity"))
    RunDir(run).set_status("succeeded", progress=1.0, message="clean win rate 0.700")
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/retrain.py")
    at.text_input(key="retrain_history_adopt_dir").set_value(str(tmp_path / "nothing-here"))
    at = settle(at)
    at.button(key="retrain_history_adopt").click()
    at = settle(at)
    assert any("Not added" in e.value and "is not a directory" in e.value for e in at.error)
    at.text_input(key="retrain_history_adopt_dir").set_value(str(run))
    at = settle(at)
    assert any(c.value == "A robustness run." for c in at.caption)
    at.button(key="retrain_history_adopt").click()
    at = settle(at)
    (job,) = Store(env["db"]).list_jobs()["id"].tolist()
    assert any(f"as job #{job} (robustness)" in s.value for s in at.success)
    assert at.selectbox(key="retrain_history_job").value == job and not at.exception


def test_a_pipeline_report_shows_what_each_selection_decoded(env, tmp_path):
    from reform_engine.runs import atomic_write_json

    run = tmp_path / "pipe"
    model = lambda name, acc: {"name": name, "checkpoint": f"/{name}", "clean_accuracy": acc, "mean_drop": 0.1,  # noqa: E731
                               "drops": {"verbosity": 0.1}, "n_pairs": 20}
    stats = {"n": 12, "inversions": 6, "success_rate": 0.5, "by_direction": {"lower": {"n": 6, "inversions": 2},
                                                                            "raise": {"n": 6, "inversions": 4}},
             "not_fluent": 0, "truncated": 5, "inappropriate": 1, "duplicates": 0}
    atomic_write_json(run / "report.json", {"models": [model("base", 0.6), model("reform", 0.65), model("random", 0.55)],
                                            "variants": {"lowest_loss": {**stats, "ordered_wrong": 0},
                                                         "random": {**stats, "ordered_wrong": 3}}})
    store = Store(env["db"])
    store.update_job(store.add_job("pipeline", {}, str(run)), state="succeeded", progress=1.0, message="done")
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/retrain.py")
    decoded = table(at, "ordered_wrong")
    assert decoded[["selection", "inversions", "truncated", "ordered_wrong"]].values.tolist() == [
        ["lowest loss (the method)", 6, 5, 0], ["random", 6, 5, 3]]
    assert any("| lowest loss (the method) | 12 | 6 (50%) | 2 / 4 |" in c.value for c in at.code) and not at.exception
