import dataclasses
import json

import pytest

from reform_engine.crossval import CrossValConfig, compare_runs, run_crossval
from reform_engine.data import DEMO_PATH, load_preferences, select_rows, write_jsonl
from reform_engine.reward_model import RewardModelSpec
from reform_engine.runtime import Runtime
from reform_engine.training import TrainRewardConfig


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("cv-data") / "pairs.jsonl"
    write_jsonl(path, [p.to_trl() for p in load_preferences(DEMO_PATH).pairs[:24]])
    return str(path)


def cv_config(data: str, model: str, **fields) -> CrossValConfig:
    recipe = TrainRewardConfig(data=data, model=RewardModelSpec(base_model=model, finetune="full", max_length=1024),
                               batch_size=4, epochs=1)
    return CrossValConfig(recipe=recipe, **{"folds": 3, "runtime": Runtime(device="cpu", seed=0), **fields})


def test_each_fold_trains_on_the_others_and_is_scored_on_itself_beside_the_probe_and_length_rules(small_data, tiny_model_dir,
                                                                                                 tmp_path):
    result = run_crossval(cv_config(small_data, tiny_model_dir), tmp_path / "cv")
    pairs = load_preferences(small_data).pairs
    assert [f.fold for f in result.folds] == [0, 1, 2] and result.complete
    held = [{p.pair_id for p in select_rows(pairs, f"fold={k}/3@0")} for k in range(3)]
    for f, ids in zip(result.folds, held):
        assert f.n == len(ids) and f.train_pairs == 24 - len(ids)
        wins = json.loads((tmp_path / "cv" / f"fold-{f.fold}" / "heldout.json").read_text())["wins"]
        assert set(wins) == ids                                   # scored on exactly its own fold
        assert f.rm_accuracy == pytest.approx(sum(w[0] for w in wins.values()) / len(wins))
        assert f.longer_baseline == pytest.approx(
            sum((len(p.chosen) > len(p.rejected)) + 0.5 * (len(p.chosen) == len(p.rejected)) for p in pairs if p.pair_id in ids)
            / len(ids))
        assert f.probe_accuracy is not None and 0 <= f.probe_accuracy <= 1
        train_rows = json.loads((tmp_path / "cv" / f"fold-{f.fold}" / "config.json").read_text())["train_rows"]
        assert train_rows == f"fold!={f.fold}/3@0"
    assert result.rm.pooled.n == 24 and result.probe.pooled.n == 24
    assert result.rm.mean == pytest.approx(sum(f.rm_accuracy for f in result.folds) / 3)
    assert result.rm_minus_probe is not None and result.rm_minus_probe.n == 24
    metrics = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    assert len(metrics["table"]) == 3 and metrics["complete"] is True


def test_a_run_spread_over_calls_reports_every_fold_done_so_far_and_reuses_finished_folds(small_data, tiny_model_dir, tmp_path):
    first = run_crossval(cv_config(small_data, tiny_model_dir, only_folds="0", probe=False), tmp_path / "cv")
    assert [f.fold for f in first.folds] == [0] and not first.complete and first.probe is None
    second = run_crossval(cv_config(small_data, tiny_model_dir, only_folds="1,2", probe=False), tmp_path / "cv")
    assert [f.fold for f in second.folds] == [0, 1, 2] and second.complete
    assert second.folds[0] == first.folds[0]
    log = (tmp_path / "cv" / "log.txt").read_text()
    assert log.count("stage fold-0: ran") == 1


def test_bad_settings_say_what_to_write():
    with pytest.raises(ValueError, match="folds"):
        CrossValConfig(folds=1)
    with pytest.raises(ValueError, match="folds run from 0 to 4"):
        CrossValConfig(only_folds="5")
    with pytest.raises(ValueError, match="separated by commas"):
        CrossValConfig(only_folds="a")
    with pytest.raises(ValueError, match="leave it empty"):
        CrossValConfig(recipe=TrainRewardConfig(train_rows="0:100"))


def test_the_report_a_page_draws_has_every_fold_and_pooled_intervals(small_data, tiny_model_dir, tmp_path):
    from reform_engine.crossval import read_report

    assert read_report(tmp_path / "cv") is None
    result = run_crossval(cv_config(small_data, tiny_model_dir, folds=2), tmp_path / "cv")
    report = read_report(tmp_path / "cv")
    assert [(r["fold"], r["model"]) for r in report["folds"]] == [
        (k, m) for k in (0, 1) for m in ("RM (the recipe)", "linear probe", "always longer", "always shorter")]
    pooled = {r["model"]: r for r in report["pooled"]}
    assert pooled["RM (the recipe)"]["value"] == result.rm.pooled.estimate and pooled["RM (the recipe)"]["n"] == 24
    assert pooled["linear probe"]["low"] <= pooled["linear probe"]["value"] <= pooled["linear probe"]["high"]
    assert report["complete"] is True and report["rm_minus_probe"]["n"] == 24


def test_the_folds_share_the_runs_own_trunk_cache_or_the_one_the_setting_names(tmp_path):
    run_cache = tmp_path / "cv" / "trunk_cache"
    assert CrossValConfig().fold_recipe(1, run_cache).runtime.trunk_cache == str(run_cache)  # 'auto'
    earlier = f"{tmp_path}/earlier/trunk_cache"   # an earlier run's cache of the same backbone and split
    config = CrossValConfig(runtime=Runtime(trunk_cache=earlier))
    assert [config.fold_recipe(k, run_cache).runtime.trunk_cache for k in range(2)] == [earlier, earlier]
    assert CrossValConfig(runtime=Runtime(trunk_cache="off")).fold_recipe(0, run_cache).runtime.trunk_cache == "off"


def test_a_candidate_recipe_is_compared_with_the_default_on_the_same_held_out_pairs_paired(small_data, tiny_model_dir, tmp_path):
    run_crossval(cv_config(small_data, tiny_model_dir, probe=False), tmp_path / "default")
    candidate = cv_config(small_data, tiny_model_dir, probe=False, only_folds="0,1")
    run_crossval(dataclasses.replace(candidate, recipe=dataclasses.replace(candidate.recipe, epochs=2, lr=1e-3)),
                 tmp_path / "candidate")
    report = compare_runs(tmp_path / "candidate", tmp_path / "default")
    pairs = load_preferences(small_data).pairs
    both = {p.pair_id for p in select_rows(pairs, "fold!=2/3@0")}   # the folds both runs have scored
    assert report["n"] == len(both) and not report["complete"]
    wins = {}
    for name in ("candidate", "default"):
        wins[name] = {}
        for k in (0, 1):
            wins[name].update(json.loads((tmp_path / name / f"fold-{k}" / "heldout.json").read_text())["wins"])
    diff = sum(wins["candidate"][i][0] - wins["default"][i][0] for i in both) / len(both)
    assert report["difference"].estimate == pytest.approx(diff)
    assert report["difference"].low <= diff <= report["difference"].high
    assert report["changed"] == {"recipe.epochs": [1, 2], "recipe.lr": [candidate.recipe.lr, 1e-3]}   # placement aside

    config = json.loads((tmp_path / "candidate" / "config.json").read_text())
    elsewhere = {**config, "runtime": {**config["runtime"], "threads": 7, "device": "cuda", "trunk_cache": "/elsewhere"}}
    (tmp_path / "candidate" / "config.json").write_text(json.dumps(elsewhere))
    assert compare_runs(tmp_path / "candidate", tmp_path / "default")["changed"] == report["changed"]   # where it ran
    (tmp_path / "candidate" / "config.json").write_text(json.dumps({**config, "fold_seed": 1}))
    with pytest.raises(ValueError, match="drew their folds differently"):
        compare_runs(tmp_path / "candidate", tmp_path / "default")
    with pytest.raises(ValueError, match="not a crossval run directory"):
        compare_runs(tmp_path / "candidate" / "fold-0", tmp_path / "default")
