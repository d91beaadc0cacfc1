import math

import pytest

from reform_engine.reports import (arm_markdown, arm_table, best_of_n_frame, best_of_n_results, checkpoint_name, finished_result_jobs,
                                   history_frame, job_results, latest_job, log_tail, loss_curves, results_frames, stage_seconds,
                                   stage_status, versus_markdown, versus_table)
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


def test_stage_seconds_count_each_arms_own_stages_by_what_they_did_and_shared_ones_in_every_arm_built_on_them():
    pipeline = [{"name": n, "seconds": s} for n, s in [("base", 10.0), ("influence", 2.0), ("robustness_base", 1.0),
                                                        ("variants_lowest_loss", 5.0), ("retrain_reform", 12.0),
                                                        ("robustness_reform", 1.5), ("variants_random", 4.0),
                                                        ("retrain_random", 11.0), ("robustness_random", 1.25)]]
    assert stage_seconds(pipeline, "base") == {"train": 10.0, "find": 0.0, "eval": 1.0}
    assert stage_seconds(pipeline, "reform") == {"train": 12.0, "find": 7.0, "eval": 1.5}
    assert stage_seconds(pipeline, "random") == {"train": 11.0, "find": 6.0, "eval": 1.25}
    equal = pipeline + [{"name": "retrain_random_equal", "seconds": 7.0}, {"name": "robustness_random_equal", "seconds": 0.5}]
    assert stage_seconds(equal, "random_equal") == {"train": 7.0, "find": 6.0, "eval": 0.5}  # built on random's finding
    assert stage_seconds(equal, "random") == {"train": 11.0, "find": 6.0, "eval": 1.25}
    retrain = [{"name": "retrain", "seconds": 8.0}, {"name": "robustness_base", "seconds": 1.0},
               {"name": "robustness_retrained", "seconds": 2.0}]
    assert stage_seconds(retrain, "retrained") == {"train": 8.0, "find": 0.0, "eval": 2.0}
    rounds = [{"name": "attack_r1", "seconds": 30.0}, {"name": "retrain_r1", "seconds": 9.0},
              {"name": "robustness_r1", "seconds": 1.0}, {"name": "attack_r1_lambda0", "seconds": 20.0}]
    assert stage_seconds(rounds, "round 1") == {"train": 9.0, "find": 30.0, "eval": 1.0}


def test_the_pipelines_ablation_arms_count_the_stages_they_are_built_on_and_best_of_n_as_evaluation():
    pipeline = [{"name": n, "seconds": s} for n, s in [("influence", 2.0), ("robustness_base", 1.0), ("variants_lowest_loss", 5.0),
                                                        ("retrain_reform", 12.0), ("robustness_reform", 1.5),
                                                        ("retrain_reform_finetune", 3.0), ("robustness_reform_finetune", 1.25),
                                                        ("variants_highest_loss", 4.0), ("retrain_highest_loss", 11.0),
                                                        ("robustness_highest_loss", 1.0), ("bon_reform", 30.0),
                                                        ("bon_reform_finetune", 20.0), ("bon_highest_loss", 10.0)]]
    assert stage_seconds(pipeline, "reform") == {"train": 12.0, "find": 7.0, "eval": 31.5}
    assert stage_seconds(pipeline, "reform_finetune") == {"train": 3.0, "find": 7.0, "eval": 21.25}
    assert stage_seconds(pipeline, "highest_loss") == {"train": 11.0, "find": 6.0, "eval": 11.0}
    assert stage_seconds(pipeline, "base") == {"train": 0.0, "find": 0.0, "eval": 1.0}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real tiny pipeline run (its arms: base, reform on two approved pairs, the random p% when it finds
    inversions, and no new pairs) and a best-of-N run of its reform RM against its base, judged by an RM
    trained apart, in a store."""
    from conftest import make_pair
    from reform_engine.best_of_n import BestOfNConfig, run_best_of_n
    from reform_engine.data import write_jsonl
    from reform_engine.decoding import DecodingConfig
    from reform_engine.inversions import GenerateVariantsConfig
    from reform_engine.pipeline import PipelineConfig, run_pipeline
    from reform_engine.reward_model import RewardModelSpec, build_reward_model
    from reform_engine.robustness import RobustnessConfig
    from reform_engine.rollouts import ResponseConfig
    from reform_engine.runtime import Runtime
    from reform_engine.stages import RetrainRecipe
    from reform_engine.tiny import save_tiny_model
    from reform_engine.training import TrainRewardConfig

    root = tmp_path_factory.mktemp("report")
    model = str(save_tiny_model(root / "m", seed=1, ascii_only=True))
    asks = ["Can you help me?", "What time is it?", "Tell me a fact.", "How do I cook rice?", "Where is Paris?",
            "Name a colour.", "What is 2+2?", "Say something nice."]
    write_jsonl(root / "d.jsonl", [make_pair(i, a, "Sure, happy to help.", "No. Go away!!").to_trl() for i, a in enumerate(asks)])
    write_jsonl(root / "approved.jsonl", [{"prompt": "Hi?", "chosen": "Hello, how can I help?", "rejected": "What."},
                                          {"prompt": "Help?", "chosen": "Sure, tell me more.", "rejected": "No!!"}])
    spec = RewardModelSpec(base_model=model, lora_layers=None, max_length=128)
    result = run_pipeline(PipelineConfig(
        base=TrainRewardConfig(data=str(root / "d.jsonl"), train_rows="0:6", model=spec, batch_size=4, lr=5e-3, epochs=1),
        eval_rows="6:", variants=GenerateVariantsConfig(reward_model="", policy=model, fraction=0.5,
                                                        decoding=DecodingConfig(k=3, max_new_tokens=4), batch_size=2),
        approved=str(root / "approved.jsonl"), retrain=RetrainRecipe(mode="finetune", replay=4),
        robustness=RobustnessConfig(reward_model="", perturbations="verbosity,capitalization"),
        runtime=Runtime(device="cpu")), root / "pipeline")
    judge = str(build_reward_model(RewardModelSpec(base_model=model, finetune="full", max_length=128), device="cpu",
                                   seed=9).save(root / "judge"))
    ckpt = {m.name: m.checkpoint for m in result.models}
    bon = run_best_of_n(BestOfNConfig(rm_a=ckpt["base"], rm_b=ckpt["reform"], judge_rm=judge, policy=model, data=str(root / "d.jsonl"),
                                      rows="6:", n=2, response=ResponseConfig(max_new_tokens=4, sentence_window=0),
                                      runtime=Runtime(device="cpu", seed=2)), root / "bon")
    store = Store(root / "reform.duckdb")
    job = store.add_job("best-of-n", {}, str(root / "bon"))
    store.update_job(job, state="succeeded", progress=1.0, message="done")
    return root, result, bon, store


def test_the_report_table_has_one_row_per_arm_of_a_real_tiny_run_with_its_intervals_bon_indicators_and_times(tiny_run):
    root, result, bon, store = tiny_run
    bons = best_of_n_results(store.list_jobs().to_dict("records"))
    assert [b["win_rate"] for b in bons] == [bon.win_rate] and bons[0]["rm_b"] == bon.rm_b
    table = arm_table(root / "pipeline", bons, run="tiny")
    report = {m.name: m for m in result.models}
    arms = list(report)
    assert table["arm"].tolist() == arms and arms[:2] == ["base", "reform"] and arms[-1] == "no_aug"
    assert table["run"].tolist() == ["tiny"] * len(arms) and table["n_pairs"].tolist() == [2] * len(arms)
    assert table["added_pairs"].tolist() == [m.augment_pairs for m in result.models] and table["added_pairs"][1] == 2
    assert table["clean_accuracy"].tolist() == [m.clean_accuracy for m in result.models]
    assert table["mean_drop"].tolist() == [m.mean_drop for m in result.models]
    assert table["drop:verbosity"].tolist() == [m.drops["verbosity"] for m in result.models]
    for column in ("clean_accuracy", "mean_drop", "drop:capitalization"):
        assert all(lo <= v <= hi for v, lo, hi in zip(table[column], table[f"{column}_low"], table[f"{column}_high"]))
    assert table["clean_accuracy_low"][0] == report["base"].intervals["clean_accuracy"]["low"]
    base_drop = report["base"].mean_drop
    assert table["drop_vs_base"][0] is None and table["drop_vs_base_low"][0] is None
    assert table["drop_vs_base"][1] == (report["reform"].mean_drop / base_drop if base_drop else None)
    high = report["reform"].intervals["vs_base"]["drop_ratio"]["high"]  # NaN (None in the table) when the base drops nothing
    assert table["drop_vs_base_high"][1] == (None if high != high else high)
    paired = report["reform"].intervals["vs_base"]
    assert table["clean_vs_base"].tolist()[:2] == [None, report["reform"].clean_accuracy - report["base"].clean_accuracy]
    assert (table["clean_vs_base_low"][1], table["clean_vs_base_high"][1]) == (paired["clean_accuracy"]["low"],
                                                                               paired["clean_accuracy"]["high"])
    assert table["drop_change"].tolist()[:2] == [None, report["reform"].mean_drop - base_drop]
    assert (table["drop_change_low"][1], table["drop_change_high"][1]) == (paired["mean_drop"]["low"], paired["mean_drop"]["high"])
    # the best-of-N result belongs to the reform arm alone: its RM A is the base, its RM B the reform RM
    assert table["bon_win_rate"].tolist() == [bon.win_rate if arm == "reform" else None for arm in arms]
    assert (table["bon_win_rate_low"][1], table["bon_win_rate_high"][1], table["bon_prompts"][1]) == (bon.low, bon.high, 2)
    assert table["extreme_negative_share"].tolist() == [m.indicators["extreme_negative_share"] for m in result.models]
    assert table["length_corr"].tolist() == [m.indicators["length_corr"] for m in result.models]
    seconds = {t.name: t.seconds for t in result.stages}
    assert table["seconds_train"][0] == seconds["base"] and table["seconds_eval"][0] == seconds["robustness_base"]
    assert table["seconds_find"][1] == seconds["influence"] + seconds["variants_lowest_loss"]
    assert table["seconds_train"].tolist()[-1] == seconds["retrain_no_aug"] and table["seconds_find"].tolist()[-1] == 0.0


def test_the_report_table_renders_as_markdown_with_intervals_and_dashes_where_a_value_is_missing(tiny_run):
    root, result, bon, store = tiny_run
    text = arm_markdown(arm_table(root / "pipeline", best_of_n_results(store.list_jobs().to_dict("records")), run="tiny"))
    lines = text.splitlines()
    assert len(lines) == 2 + len(result.models) and lines[0].startswith("| run | arm | added pairs | held-out pairs | clean accuracy [95% CI] |")
    assert "| drop: capitalization | drop: verbosity |" in lines[0] and lines[1].count("---") == lines[0].count("|") - 1
    base, reform = lines[2].split(" | "), lines[3].split(" | ")
    m = result.models[1]
    ci = m.intervals["clean_accuracy"]
    assert reform[1:4] == ["reform", "2", "2"]
    assert reform[4] == f"{m.clean_accuracy:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"
    assert f"{bon.win_rate:.3f} [{bon.low:.3f}, {bon.high:.3f}] (2; {bon.same_pick})" in reform
    assert base[8:12] == ["—"] * 4   # the base has no ratio, difference or best-of-N against itself
    paired = m.intervals["vs_base"]["clean_accuracy"]
    assert reform[10] == f"{m.clean_accuracy - result.models[0].clean_accuracy:+.3f} [{paired['low']:+.3f}, {paired['high']:+.3f}]"


def test_best_of_n_runs_list_as_a_table_by_the_short_names_of_their_rms(tiny_run):
    root, result, bon, store = tiny_run
    frame = best_of_n_frame(best_of_n_results(store.list_jobs().to_dict("records")))
    assert frame[["rm_a", "rm_b", "judge", "n", "prompts"]].values.tolist() == [["base", "retrain_reform", "judge", 2, 2]]
    assert frame[["win_rate", "low", "high", "same_pick"]].values.tolist() == [[bon.win_rate, bon.low, bon.high, bon.same_pick]]
    assert best_of_n_frame([]).columns.tolist()[:3] == ["job_id", "rm_a", "rm_b"] and best_of_n_frame([]).empty


def test_a_run_without_a_report_gives_an_empty_table_and_no_markdown(tmp_path):
    assert arm_table(tmp_path).empty and arm_markdown(arm_table(tmp_path)) == ""


def test_the_reform_arm_against_each_ablation_arm_is_paired_on_the_same_held_out_pairs(tiny_run):
    from reform_engine.robustness import read_pair_scores, robustness_intervals

    root, result, _, _ = tiny_run
    table = versus_table(root / "pipeline")
    others = [m.name for m in result.models if m.name not in ("base", "reform")]
    assert table["versus"].tolist() == others and others  # every ablation arm, in the run's order
    reform = read_pair_scores(root / "pipeline" / "robustness_reform")
    for row in table.to_dict("records"):
        paired = robustness_intervals(reform, read_pair_scores(root / "pipeline" / f"robustness_{row['versus']}"))["vs_base"]
        assert (row["drop_change"], row["drop_change_low"], row["drop_change_high"]) == \
            tuple(paired["mean_drop"][k] for k in ("estimate", "low", "high"))
        assert (row["clean_vs_base"], row["n_pairs"]) == (paired["clean_accuracy"]["estimate"], 2)
    lines = versus_markdown(table).splitlines()
    assert len(lines) == 2 + len(others) and lines[2].startswith(f"| reform | {others[0]} | 2 | ")
    assert versus_table(root / "pipeline", arm="nothing").empty and versus_markdown(versus_table(root)) == ""


def test_trunk_caches_of_a_run_and_its_stages_with_their_log_lines(tmp_path):
    import json

    from reform_engine.reports import trunk_caches
    from reform_engine.runtime import Runtime
    from reform_engine.training import TrainRewardConfig

    run, shared = tmp_path / "pipe", tmp_path / "shared"
    atomic_write_json(run / "config.json", TrainRewardConfig())  # 'auto': pipe/trunk_cache
    RunDir(run / "base").set_status("succeeded", progress=1.0)
    atomic_write_json(run / "base" / "config.json", TrainRewardConfig(runtime=Runtime(trunk_cache=str(shared))))
    for d, n in ((run / "trunk_cache" / "ns1", 3), (shared / "ns2", 5)):
        d.mkdir(parents=True)
        (d / "meta.json").write_text(json.dumps({"split": 22, "layers": 30}))
        (d / "part-1-a.idx").write_bytes(b"x" * 32 * n)  # 32-byte records
        (d / "part-1-a.bin").write_bytes(b"y" * 1000)
    (run / "log.txt").write_text("2026-01-01 00:00:02 trunk cache: 3 hits, 0 misses; 3 entries\nother line\n")
    (run / "base" / "log.txt").write_text("2026-01-01 00:00:01 trunk cache: layers 0-21 of 30 from 0 stored entries\n"
                                          "2026-01-01 00:00:01 trunk cache: 0 hits, 5 misses; 5 entries\n")
    rows, lines = trunk_caches(run)
    assert [(r["directory"], r["trunk"], r["entries"], r["bytes"], r["cached_layers"]) for r in rows] == [
        (str((run / "trunk_cache").resolve()), "ns1", 3, 1096, "0-21 of 30"), (str(shared.resolve()), "ns2", 5, 1160, "0-21 of 30")]
    assert [line.split(" trunk cache: ")[1] for line in lines] == ["0 hits, 5 misses; 5 entries", "3 hits, 0 misses; 3 entries"]
    assert trunk_caches(tmp_path / "gone") == ([], []) and trunk_caches(None) == ([], [])


def test_the_variants_table_shows_what_each_selection_decoded_and_counts_ordered_wrong_from_old_runs(tmp_path):
    from reform_engine.data import write_jsonl
    from reform_engine.reports import variants_markdown, variants_table

    stats = {"n": 10, "inversions": 4, "success_rate": 0.4, "by_direction": {"lower": {"n": 5, "inversions": 1},
                                                                            "raise": {"n": 5, "inversions": 3}},
             "not_fluent": 1, "truncated": 3, "inappropriate": 1, "duplicates": 2}
    atomic_write_json(tmp_path / "report.json", {"models": [], "variants": {"lowest_loss": {**stats, "ordered_wrong": 0},
                                                                            "random": stats}})  # random: written before the count
    write_jsonl(tmp_path / "variants_random" / "variants.jsonl", [
        {"direction": "raise", "is_inversion": True, "r_chosen": 0.2, "r_rejected": 0.9},
        {"direction": "lower", "is_inversion": True, "r_chosen": 1.0, "r_rejected": 0.1},
        {"direction": "raise", "is_inversion": False, "r_chosen": 0.2, "r_rejected": 0.9}])
    table = variants_table(tmp_path, run="p")
    assert table[["selection", "variants", "inversions", "lower_inversions", "raise_inversions", "ordered_wrong"]].values.tolist() == [
        ["lowest loss (the method)", 10, 4, 1, 3, 0], ["random", 10, 4, 1, 3, 1]]
    assert variants_markdown(table).splitlines()[2] == "| p | lowest loss (the method) | 10 | 4 (40%) | 1 / 3 | 1 | 3 | 1 | 0 | 2 |"
    atomic_write_json(tmp_path / "other" / "report.json", {"models": [], "variants": {"random": stats}})
    assert variants_table(tmp_path / "other")["ordered_wrong"].isna().all()  # no variants.jsonl to count from
    assert variants_table(tmp_path / "none").empty
