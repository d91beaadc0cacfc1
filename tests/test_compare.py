import json

import pytest

from adversary_support import save_compared_runs
from reform_engine.compare import (ADVRM, REFORM, CompareConfig, MethodRun, comparison_table, distinct_n, read_samples,
                                   read_table, run_compare, trigram_overlap)
from reform_engine.runs import read_json
from reform_engine.runtime import Runtime


def sample(prompt: str, text: str, success: bool, rules=()) -> dict:
    return {"prompt_text": prompt, "text": text, "success": success, "flags": [{"rule": r, "evidence": ""} for r in rules],
            "confirmed_by": list(rules) or (["judge"] if success else [])}


def test_the_table_counts_success_per_sample_and_per_prompt_and_pairs_the_shared_prompts():
    reform = [sample("a", "one two three", True, ["repetition"]), sample("b", "x", False), sample("c", "y", False),
              sample("d", "z", False)]
    advrm = [sample("a", "buy now buy now", True, ["capitals"]), sample("a", "buy gold now", True), sample("b", "w", False),
             sample("e", "v", False)]
    table = comparison_table([MethodRun(REFORM, reform, reform, 120.0), MethodRun(ADVRM, advrm, advrm, 60.0)], n_boot=500)
    got = {(r["method"], r["unit"], r["prompts"]): (r["value"], r["n"]) for r in table["success"]}
    assert got == {(REFORM, "sample", "all"): (0.25, 4), (REFORM, "prompt", "all"): (0.25, 4), (REFORM, "prompt", "shared"): (0.5, 2),
                   (ADVRM, "sample", "all"): (0.5, 4), (ADVRM, "prompt", "all"): (pytest.approx(1 / 3), 3),
                   (ADVRM, "prompt", "shared"): (0.5, 2), (f"{REFORM} − {ADVRM}", "sample", "all"): (-0.25, 4),
                   (f"{REFORM} − {ADVRM}", "prompt", "shared"): (0.0, 2)}
    assert table["shared_prompts"] == 2
    shared = next(r for r in table["success"] if r["method"] == f"{REFORM} − {ADVRM}" and r["prompts"] == "shared")
    assert (shared["low"], shared["high"]) == (0.0, 0.0)  # both hit a, both miss b: the paired difference is exactly 0
    eff = {r["method"]: r for r in table["efficiency"]}
    assert (eff[REFORM]["confirmed_failures"], eff[REFORM]["cpu_minutes"], eff[REFORM]["value"]) == (1, 2.0, 0.5)
    assert (eff[ADVRM]["confirmed_failures"], eff[ADVRM]["cpu_minutes"], eff[ADVRM]["value"]) == (2, 1.0, 2.0)
    div = {r["method"]: r for r in table["diversity"]}
    assert (div[ADVRM]["failures"], div[ADVRM]["judge"], div[ADVRM]["rules"]) == (2, 1, {"capitals": 1})
    assert div[ADVRM]["distinct_1"] == pytest.approx(3 / 7)  # buy, now, gold among 7 words
    assert div[REFORM]["trigram_overlap"] != div[REFORM]["trigram_overlap"]  # one failure: no pair to compare


def test_the_table_lists_the_spurious_indicators_of_each_retrained_rm_as_measured():
    base = {"length_corr": 0.5, "capital_corr": -0.1, "repetition_corr": 0.0, "extreme_negative_share": 0.04}
    table = comparison_table([], spurious={"base": (0, base), REFORM: (3, {"length_corr": 0.25}), ADVRM: (3, None)}, n_boot=10)
    assert table["spurious"] == [
        {"model": "base", "added_pairs": 0, "extreme_negative_share": 0.04, "length_corr": 0.5, "capital_corr": -0.1,
         "repetition_corr": 0.0},
        {"model": REFORM, "added_pairs": 3, "extreme_negative_share": None, "length_corr": 0.25, "capital_corr": None,
         "repetition_corr": None},
        {"model": ADVRM, "added_pairs": 3, "extreme_negative_share": None, "length_corr": None, "capital_corr": None,
         "repetition_corr": None}]
    assert comparison_table([], n_boot=10)["spurious"] == []


def test_distinct_n_and_trigram_overlap_on_literal_texts():
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3) and distinct_n(["a b", "c d"], 1) == 1.0
    assert distinct_n([], 1) != distinct_n([], 1)  # NaN: nothing to count
    assert trigram_overlap(["same text", "same text", "same text"]) == 1.0
    assert trigram_overlap(["abc", "xyz"]) == 0.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("compare")
    made = save_compared_runs(root)
    compare = root / "compare"
    result = run_compare(CompareConfig(str(made["pipeline"]), str(made["rounds"]), n_boot=200,
                                       runtime=Runtime(device="cpu", threads=1)), compare)
    return {**made, "compare": compare, "result": result}


def test_the_comparison_of_real_runs_judges_both_alike_and_checks_what_makes_it_fair(runs):
    table = read_table(runs["compare"])
    checks = {c["check"]: c for c in table["checks"]}
    assert all(checks[c]["ok"] for c in ("same base RM", "same held-out pairs", "same judge and rules", "CPU time recorded",
                                         "same number of added pairs"))
    reform = read_samples(runs["compare"] / "judge_reform")
    with open(runs["pipeline"] / "variants_lowest_loss" / "variants.jsonl") as fh:
        variants = [json.loads(line) for line in fh]
    assert [r["text"] for r in reform] == [v["text"] for v in variants if v["direction"] == "raise"]  # "lower" is another failure
    for r in reform:
        assert r["success"] == (bool(r["confirmed_by"]) and r["r_sample"] > r["r_chosen"])
        assert ("judge" in r["confirmed_by"]) == (r["judge_sample"] < r["judge_chosen"])
    fresh = read_samples(runs["rounds"] / "attack_r1", "fresh")
    per_sample = {r["method"]: r for r in table["success"] if r["unit"] == "sample" and r["prompts"] == "all"}
    assert (per_sample[REFORM]["n"], per_sample[REFORM]["value"]) == (len(reform), sum(r["success"] for r in reform) / len(reform))
    assert (per_sample[ADVRM]["n"], per_sample[ADVRM]["value"]) == (8, sum(r["success"] for r in fresh) / 8)
    assert all(r["low"] <= r["value"] <= r["high"] for r in table["success"] if "−" not in r["method"])
    minutes = {r["method"]: r["cpu_minutes"] for r in table["efficiency"]}
    cpu = [read_json(d / "metrics.json")["cpu_seconds"] for d in (runs["pipeline"] / "influence",
                                                                   runs["pipeline"] / "variants_lowest_loss", runs["rounds"] / "attack_r1")]
    assert minutes == {REFORM: pytest.approx((cpu[0] + cpu[1]) / 60), ADVRM: pytest.approx(cpu[2] / 60)} and min(cpu) > 0
    assert runs["result"].success == {REFORM: per_sample[REFORM]["value"], ADVRM: per_sample[ADVRM]["value"]}


def test_both_methods_rms_are_retrained_on_the_same_number_of_pairs_and_compared_pair_by_pair(runs):
    table, compare = read_table(runs["compare"]), runs["compare"]
    n = runs["result"].added_pairs
    assert n == 1  # REFORM's arm had one curated pair
    # REFORM's RM on that one pair is the pipeline's own reform arm: the same config, used as it is
    assert not (compare / "retrain_reform").exists() and not (compare / "robustness_reform").exists()
    advrm_pairs = sum(1 for _ in open(runs["rounds"] / "pairs_r1.jsonl"))
    if advrm_pairs > 1:  # a seeded sample of one of round 1's pairs
        assert read_json(compare / "retrain_advrm" / "config.json")["augment_data"] == str(compare / "pairs_advrm.jsonl")
        assert sum(1 for _ in open(compare / "pairs_advrm.jsonl")) == 1
    rows = {(r["model"], r["metric"]): r for r in table["retrained"]}
    assert {m for m, _ in rows} == {"base", REFORM, ADVRM}
    assert {r["added_pairs"] for r in table["retrained"] if r["model"] != "base"} == {n}
    reform_rob = read_json(runs["pipeline"] / "robustness_reform" / "metrics.json")
    assert rows[REFORM, "clean accuracy"]["value"] == pytest.approx(reform_rob["clean_win_rate"])
    assert rows[REFORM, "mean drop"]["value"] == pytest.approx(reform_rob["mean_drop"])
    assert rows["base", "clean accuracy"]["n"] == 2  # the held-out rows 6-7
    paired = {r["metric"] for r in table["paired"]}
    assert paired == {"clean accuracy", "mean drop", "capitalization", "verbosity"}
    # the indicators each RM's robustness run measured (REFORM's: the pipeline's own reform arm; base: the rounds')
    spurious = {r["model"]: r for r in table["spurious"]}
    measured = {"base": runs["rounds"] / "robustness_base", REFORM: runs["pipeline"] / "robustness_reform",
                ADVRM: compare / "robustness_advrm" if (compare / "robustness_advrm").exists() else runs["rounds"] / "robustness_r1"}
    for model, where in measured.items():
        indicators = read_json(where / "metrics.json")["indicators"]
        assert len(indicators) == 4 and {k: spurious[model][k] for k in indicators} == indicators
        assert spurious[model]["added_pairs"] == (0 if model == "base" else n)
    diff = next(r for r in table["paired"] if r["metric"] == "clean accuracy")
    assert diff["value"] == pytest.approx(rows[ADVRM, "clean accuracy"]["value"] - rows[REFORM, "clean accuracy"]["value"])


def test_each_method_attacks_the_rm_the_other_one_hardened(runs):
    table, compare = read_table(runs["compare"]), runs["compare"]
    cross = {(r["attacker"], r["target"]): r for r in table["cross"]}
    assert set(cross) == {("REFORM decoding", "base"), ("REFORM decoding", "Adv-RM's RM"), ("Adv-RM attack", "base"),
                          ("Adv-RM attack", "REFORM's RM"), ("REFORM decoding", "Adv-RM's RM − base"),
                          ("Adv-RM attack", "REFORM's RM − base")}
    reform_rm = read_json(runs["pipeline"] / "retrain_reform" / "metrics.json")["checkpoint"]
    assert read_json(compare / "attack_vs_reform" / "config.json")["target_rm"] == reform_rm
    decoded = read_json(compare / "variants_vs_advrm" / "config.json")
    assert (decoded["directions"], decoded["fraction"], decoded["data"]) == ("raise", 1.0, str(compare / "reform_pairs.jsonl"))
    assert cross["REFORM decoding", "Adv-RM's RM"]["n"] == cross["REFORM decoding", "base"]["n"]  # the same influential pairs
    assert cross["Adv-RM attack", "REFORM's RM"]["n"] == 8
    fresh = read_samples(compare / "attack_vs_reform", "fresh")
    row = cross["Adv-RM attack", "REFORM's RM"]
    assert row["target_prefers"] == pytest.approx(sum(s["r_sample"] > s["r_chosen"] for s in fresh) / len(fresh))
    for r in table["cross"]:  # success needs the attacked RM to prefer the sample, so it is never the larger share
        if "−" not in r["target"]:
            assert r["target_prefers_low"] <= r["target_prefers"] <= r["target_prefers_high"] and r["value"] <= r["target_prefers"]


def test_reform_decodes_the_attacks_own_prompts_so_both_methods_meet_on_the_same_prompts(runs):
    table, compare = read_table(runs["compare"]), runs["compare"]
    attack = read_json(runs["rounds"] / "attack_r1" / "config.json")
    with open(compare / "attack_pairs.jsonl") as fh:
        pairs = [json.loads(line) for line in fh]
    assert len(pairs) == attack["prompts"] == table["same_prompts_n"]   # every attacked prompt, on both sides
    decoded = read_json(compare / "variants_attack_prompts" / "config.json")
    assert (decoded["directions"], decoded["data"], decoded["reward_model"]) == \
        ("raise", str(compare / "attack_pairs.jsonl"), attack["target_rm"])      # against the base, as the attack
    on_attack = read_samples(compare / "judge_attack_prompts")
    rows = {(r["method"], r["unit"], r["prompts"]): r for r in table["same_prompts"]}
    assert rows[REFORM, "sample", "all"]["value"] == pytest.approx(sum(r["success"] for r in on_attack) / len(on_attack))
    assert rows[REFORM, "prompt", "shared"]["n"] == rows[ADVRM, "prompt", "shared"]["n"] == attack["prompts"]
    diff = rows[f"{REFORM} − {ADVRM}", "prompt", "shared"]
    assert diff["value"] == pytest.approx(rows[REFORM, "prompt", "shared"]["value"] - rows[ADVRM, "prompt", "shared"]["value"])


def test_a_compare_job_refuses_runs_that_have_not_finished(runs, tmp_path):
    with pytest.raises(ValueError, match="is not a finished pipeline run"):
        run_compare(CompareConfig(str(tmp_path / "nothing"), str(runs["rounds"]), runtime=Runtime(device="cpu")), tmp_path / "c")
    with pytest.raises(ValueError, match="rounds_dir is empty"):
        CompareConfig(str(runs["pipeline"]), "")


def test_the_influential_pairs_of_a_pipeline_become_a_prompt_file_an_attack_can_take(runs, tmp_path):
    from reform_engine.compare import write_reform_pairs
    from reform_engine.data import load_preferences

    n = write_reform_pairs(runs["pipeline"], tmp_path / "prompts.jsonl")
    pairs = load_preferences(str(tmp_path / "prompts.jsonl")).pairs
    reform = read_samples(runs["compare"] / "judge_reform")
    assert n == len(pairs) == len({r["pair_id"] for r in reform}) == 3  # half of the 6 training pairs
    assert [list(p.prompt) for p in pairs] == [r["prompt"] for r in reform]


def test_a_run_still_running_other_stages_is_read_once_the_stages_compared_finished(tmp_path):
    from reform_engine.compare import _finished_run

    run = tmp_path / "pipeline"
    for name, state in (("", "running"), ("influence", "succeeded"), ("variants_lowest_loss", "succeeded"),
                        ("variants_random", "running")):
        (run / name).mkdir(parents=True, exist_ok=True)
        (run / name / "status.json").write_text(json.dumps({"state": state}))
    (run / "config.json").write_text(json.dumps({"fraction": 0.05}))
    assert _finished_run(run, "pipeline", ("influence", "variants_lowest_loss")) == {"fraction": 0.05}
    with pytest.raises(ValueError, match="not finished: robustness_base"):
        _finished_run(run, "pipeline", ("influence", "robustness_base"))


def test_a_run_is_comparable_once_the_stages_compared_finished_and_not_before(tmp_path):
    from reform_engine.compare import NEEDED_STAGES, comparable

    run = tmp_path / "rounds"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"state": "running"}))
    (run / "config.json").write_text("{}")
    assert not comparable(run, "adv-rounds")
    for i, name in enumerate(NEEDED_STAGES["adv-rounds"]):
        (run / name).mkdir()
        (run / name / "status.json").write_text(json.dumps({"state": "succeeded"}))
        assert comparable(run, "adv-rounds") == (i == len(NEEDED_STAGES["adv-rounds"]) - 1)
    assert not comparable(run, "pipeline")              # other stages
    assert not comparable(tmp_path / "missing", "adv-rounds")


def test_the_reform_side_takes_the_pairs_the_pipelines_reform_arm_took(tmp_path):
    from reform_engine.compare import reform_pairs_source

    assert reform_pairs_source({"filter_inappropriate": True}, tmp_path) == str(tmp_path / "augment_appropriate.jsonl")
    assert reform_pairs_source({"filter_inappropriate": False}, tmp_path) == str(tmp_path / "augment.jsonl")
    assert reform_pairs_source({"approved": "/a.jsonl", "filter_inappropriate": True}, tmp_path) == "/a.jsonl"
