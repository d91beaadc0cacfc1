import dataclasses
import json

import pytest

from adversary_support import save_attack_models, tiny_attack_config
from reform_engine.adv_rounds import BASELINE, AdvRoundsConfig, _below_floor, run_adv_rounds
from reform_engine.attack import read_kept
from reform_engine.confirm import ConfirmConfig
from reform_engine.reports import job_results
from reform_engine.robustness import RobustnessConfig
from reform_engine.runs import read_json
from reform_engine.runtime import Runtime


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    return save_attack_models(tmp_path_factory.mktemp("rounds-models"))


def rounds_config(models, attack: dict | None = None, **fields) -> AdvRoundsConfig:
    """Rounds on the tiny models: 8 pairs, the first 6 to train on (the attack takes prompts 0-3 of
    them), rows 6-7 held out; the target was not trained here, so its recipe is its spec on those rows."""
    return AdvRoundsConfig(attack=tiny_attack_config(models, **(attack or {})), data=models["data"], train_rows="0:6",
                           **{"robustness": RobustnessConfig(reward_model="", perturbations="capitalization,verbosity"),
                              "runtime": Runtime(device="cpu", threads=1), **fields})


def lines(path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def test_two_rounds_retrain_on_every_pair_so_far_and_report_each_round_and_each_rm(models, tmp_path):
    config = rounds_config(models, confirmed_only=False, baseline_arm=True)
    result = run_adv_rounds(config, tmp_path / "run")
    run = tmp_path / "run"
    report = read_json(run / "report.json")
    assert sorted(report) == ["complete", "drops", "models", "report_path", "rounds", "seconds", "stages", "summary", "variants"]
    assert report["complete"] and [m["name"] for m in report["models"]] == ["base", "round 1", "round 2"]
    rows = report["rounds"]
    assert [(r["round"], r["arm"], r["target"]) for r in rows] == [
        (1, "adv-rm", "base"), (1, BASELINE, "base"), (2, "adv-rm", "round 1"), (2, BASELINE, "round 1"),
        (3, "adv-rm", "round 2"), (3, BASELINE, "round 2")]
    r1, r2, final = rows[0], rows[2], rows[4]
    kept1, kept2 = read_kept(run / "attack_r1"), read_kept(run / "attack_r2")
    first = [r["new_pair"] for r in kept1]
    new = [r["new_pair"] for r in kept2 if r["new_pair"] not in first]  # a pair found again adds nothing
    assert (r1["kept"], r2["kept"]) == (len(kept1), len(kept2)) and r1["added"] == len(kept1) > 0
    assert r2["total_pairs"] == r1["added"] + r2["added"] and r2["added"] == len(new) > 0
    assert (final["added"], final["retrained"], final["stop"]) == (0, "", "")
    assert all(r["added"] == 0 and r["retrained"] == "" for r in rows if r["arm"] == BASELINE)  # reported, never trained on
    assert [m["augment_pairs"] for m in report["models"]] == [0, r1["total_pairs"], r2["total_pairs"]]
    assert [m["checkpoint"] for m in report["models"][1:]] == [r1["retrained"], r2["retrained"]]
    assert all(set(m["drops"]) == {"capitalization", "verbosity"} for m in report["models"])

    # round 2 attacks round 1's RM and retrains the base's recipe from scratch on all the pairs so far
    assert read_json(run / "attack_r2" / "config.json")["target_rm"] == r1["retrained"]
    assert read_json(run / "attack_r1_lambda0" / "config.json")["reward"]["penalty_weight"] == 0.0
    retrain2 = read_json(run / "retrain_r2" / "config.json")
    assert (retrain2["augment_data"], retrain2["init_from"], retrain2["train_rows"]) == (str(run / "pairs_r2.jsonl"), "", "0:6")
    pairs = lines(run / "pairs_r2.jsonl")
    assert pairs == first + new
    assert read_json(run / "retrain_r2" / "metrics.json")["train_pairs"] == 6 + len(pairs)
    robustness = read_json(run / "robustness_r1" / "config.json")
    assert (robustness["reward_model"], robustness["rows"]) == (r1["retrained"], "6:")  # the rows after the training rows
    assert [m.name for m in result.models] == ["base", "round 1", "round 2"] and len(result.rounds) == 6

    # the Retrain page's reader takes it like a pipeline's report
    summary, drops = job_results({"id": 7, "kind": "adv-rounds", "state": "succeeded", "run_dir": str(run)})
    assert [s["model"] for s in summary] == ["base", "round 1", "round 2"] and len(drops) == 6

    again = run_adv_rounds(config, run)  # a re-run finds every stage finished: nothing runs twice
    assert all(t.reused for t in again.stages) and again.rounds == result.rounds

    first_only = run_adv_rounds(dataclasses.replace(config, baseline_rounds=1), run)  # the lambda = 0 arm beside round 1 only
    assert all(t.reused for t in first_only.stages)
    assert [(r["round"], r["arm"]) for r in first_only.rounds] == [(1, "adv-rm"), (1, BASELINE), (2, "adv-rm"), (3, "adv-rm")]


def test_a_stop_at_the_floor_says_the_base_never_broke_in_round_1_and_the_retrained_rm_holds_later():
    assert _below_floor(0.039, 0.05, 1).endswith("the attack does not break the base RM often enough to train on")
    assert _below_floor(0.01, 0.05, 3) == "pass rate 0.010 below the floor 0.05: the retrained RM no longer falls for the attack"


def test_the_rounds_stop_when_the_attack_passes_the_filter_less_often_than_the_floor(models, tmp_path):
    result = run_adv_rounds(rounds_config(models, {"reward": {"threshold": 10.0}}, pass_floor=0.05), tmp_path / "run")
    (row,) = result.rounds
    assert (row["round"], row["pass_rate"], row["added"]) == (1, 0.0, 0)
    assert row["stop"] == "pass rate 0.000 below the floor 0.05: the attack does not break the base RM often enough to train on"
    assert [m.name for m in result.models] == ["base"] and not (tmp_path / "run" / "retrain_r1").exists()
    status = read_json(tmp_path / "run" / "status.json")
    assert status["state"] == "succeeded" and read_json(tmp_path / "run" / "report.json")["complete"]


def test_with_confirmed_samples_only_a_round_without_a_confirmed_one_ends_the_rounds(models, tmp_path):
    # no judge and no rule: nothing can be confirmed, however much passes the filter
    result = run_adv_rounds(rounds_config(models, {"judge_rm": "", "confirm": ConfirmConfig(rules="")}), tmp_path / "run")
    (row,) = result.rounds
    assert row["kept"] > 0 and row["confirmed"] == 0 and row["pass_rate"] >= 0.05
    assert row["stop"] == "no new confirmed sample to add" and not (tmp_path / "run" / "pairs_r1.jsonl").exists()


@pytest.mark.parametrize("fields, message", [
    (dict(rounds=0), "rounds must be >= 1"),
    (dict(pass_floor=1.5), r"pass_floor must be a share in \[0, 1\]"),
    (dict(eval_rows="six"), "rows='six'"),
])
def test_rounds_config_refuses_bad_settings_saying_what_to_do(models, fields, message):
    with pytest.raises(ValueError, match=message):
        rounds_config(models, **fields)
    with pytest.raises(ValueError, match="attack.keep.fresh_samples must be >= 1"):
        rounds_config(models, {"keep": {"fresh_samples": 0}})


def test_attack_prompts_among_the_held_out_pairs_are_refused_before_any_attack(models, tmp_path):
    config = rounds_config(models, eval_rows="2:")  # the attack takes rows 0-3
    with pytest.raises(ValueError, match=r"2 attacked prompts are among the held-out pairs \(rows '2:' .*set attack.rows within"):
        run_adv_rounds(config, tmp_path / "run")
    assert not (tmp_path / "run" / "attack_r1").exists()


def test_a_rounds_job_runs_in_the_background_and_its_attacks_samples_reach_curation(models, tmp_path):
    import time

    from reform_engine.jobs import ACTIVE, refresh_job, start_job
    from reform_engine.store import Store

    store = Store(tmp_path / "project" / "reform.duckdb")
    job_id = start_job(store, "adv-rounds", rounds_config(models, rounds=1, final_attack=False, confirmed_only=False))
    deadline = time.monotonic() + 600  # only so a broken job cannot hang the suite; never a speed requirement
    while (job := refresh_job(store, job_id))["state"] in ACTIVE:
        assert time.monotonic() < deadline, job["message"]
        time.sleep(0.2)
    assert job["state"] == "succeeded", job["message"]
    assert job["message"].startswith("base: pass rate ")
    kept = read_kept(f"{job['run_dir']}/attack_r1")
    stored = store.list_variants(inversions_only=False, job_id=job_id)
    assert sorted(stored["text"]) == sorted(r["text"] for r in kept) and set(stored["direction"]) == {"adv-rm"}
