"""The HH runs kept in benchmarks/checkpoints/ are the jobs the plan scripts would run: restored into benchmarks/out/,
each is found finished and skipped (benchmarks/checkpoints/README.md)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from reform_engine.config_keys import same_job

ROOT = Path(__file__).resolve().parent.parent
KEPT = ROOT / "benchmarks" / "checkpoints"
sys.path.insert(0, str(ROOT / "benchmarks"))


def plan_args(out: Path, data: str, **more) -> argparse.Namespace:
    return argparse.Namespace(data=data, fold=0, folds=5, fold_seed=0, out=out, device="auto", threads=1,
                              trunk_cache="auto", dry_run=True, **more)


def kept(plan: str, job: str) -> tuple[dict, dict]:
    run = KEPT / plan / job
    return json.loads((run / "config.json").read_text()), json.loads((run / "status.json").read_text())


def test_each_kept_training_run_is_the_plan_scripts_own_job_and_finished():
    import run_advrm_hh
    import run_reform_hh

    data = kept("reform_hh", "base")[0]["data"]   # the absolute path of the machine the runs were made on
    if not Path(data).is_file():
        pytest.skip(f"the kept runs read {data}, not on this machine: their configs name it")
    reform = {path.name: config for kind, config, path, _ in
              run_reform_hh.configs(plan_args(KEPT / "reform_hh", data, fraction=0.05, base_rm="", judge_rm=""))
              if kind == "train-rm"}
    advrm = {path.name: config for kind, config, path in
             run_advrm_hh.configs(plan_args(KEPT / "advrm_hh", data, plan=2, base_rm="b", judge_rm="j"))
             if kind == "train-rm"}
    expected = {("reform_hh", "base"), ("reform_hh", "judge"), ("advrm_hh", "penalty-1"), ("advrm_hh", "penalty-2")}
    present = {(plan, job) for plan, job in expected if (KEPT / plan / job / "config.json").is_file()}
    assert {("reform_hh", "base"), ("reform_hh", "judge")} <= present
    for plan, job in present:
        previous, status = kept(plan, job)
        assert status["state"] == "succeeded"
        assert same_job(previous, (reform if plan == "reform_hh" else advrm)[job]), f"{plan}/{job} is not the plan's job"
        assert (KEPT / plan / job / "checkpoint" / "head.safetensors").is_file()


def test_the_kept_base_reaches_its_stated_held_out_accuracy_on_fold_0():
    """252 of 377 (66.8%, base-eval-fold0/metrics.json and the README's table): the model the earlier HH figures used."""
    from _paths import HH_DEV_PATH
    from reform_engine.data import load_preferences, select_rows
    from reform_engine.evaluation import pair_wins
    from reform_engine.reward_model import load_reward_model
    from reform_engine.scoring import score_pairs

    if not Path(HH_DEV_PATH).is_file():
        pytest.skip(f"needs the HH harmless dev file at {HH_DEV_PATH}")
    stated = json.loads((KEPT / "reform_hh" / "base-eval-fold0" / "metrics.json").read_text())["metrics"]
    rm = load_reward_model(str(KEPT / "reform_hh" / "base" / "checkpoint"), device="cpu", dtype="float32")
    pairs = select_rows(load_preferences(str(HH_DEV_PATH), skip_invalid=True).pairs, "fold=0/5@0")
    scores = score_pairs(rm, pairs, max_length=1024)
    assert (len(pairs), int(pair_wins(scores.r_chosen, scores.r_rejected).sum())) == (stated["n"], 252)
