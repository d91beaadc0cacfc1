import json
import os
import signal

import pytest

from adversary_support import save_attack_models, tiny_attack, tiny_attack_config
from job_support import wait_for
from reform_engine.attack import KEPT_FILE, SAMPLES_FILE, SNAPSHOT_FILE, STEPS_FILE, AttackConfig, read_kept, read_steps, run_attack
from reform_engine.configs import JobConfigError, config_from_dict
from reform_engine.curation import new_pair, queue
from reform_engine.jobs import cancel_job, ingest_results, process_alive, refresh_job, start_job
from reform_engine.runs import read_json
from reform_engine.store import Store

STEP_KEYS = {"step", "reward", "target_z", "penalty_z", "disagreement", "above_threshold", "penalty_term", "shortfall_term",
             "incomplete_rate", "kl_term", "kl", "entropy", "length", "eos_rate", "complete_rate", "pass_rate", "loss", "grad_norm",
             "seconds"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    return save_attack_models(tmp_path_factory.mktemp("attack-models"))


@pytest.fixture()
def store(tmp_path):
    return Store(tmp_path / "project" / "reform.duckdb")


@pytest.mark.parametrize("fields, message", [
    (dict(penalty_rms="only/one"), r"penalty_rms='only/one': give at least 2 different checkpoints"),
    (dict(penalty_rms="a,a"), r"give at least 2 different checkpoints"),
    (dict(penalty_rms="t,b"), r"the target RM is among the penalty RMs"),
    (dict(judge_rm="b"), r"the judge RM is also in the reward"),
    (dict(rloo={"group_size": 1}), r"group_size must be >= 2: leave-one-out needs another rollout"),
    (dict(reward={"base_samples": 1}), r"base_samples must be >= 2"),
    (dict(reward={"penalty_weight": 1.0}), r"penalty_weight=1.0: use 0 \(the over-optimisation baseline\) or > 1"),
    (dict(reward={"penalty_weight": 3.0}), r"below_cost=5.0: make C > 0 and > penalty_weight \* clip_high = 6"),
    (dict(keep={"keep_last": 1.5}), r"keep_last must be a share in \[0, 1\]"),
])
def test_attack_config_refuses_bad_settings_saying_what_to_do(fields, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(AttackConfig, {"target_rm": "t", "penalty_rms": "a,b"} | fields)


# an attack's config as stored before its settings were grouped: job rows and run directories' config.json
FLAT = {"target_rm": "t", "penalty_rms": "a,b", "judge_rm": "j", "prompts": 5, "penalty_weight": 3.0, "kl_weight": 0.1,
        "threshold": 0.5, "below_cost": 7.0, "clip_low": -1.0, "clip_high": 1.5, "sd_floor": 0.5, "base_samples": 6,
        "group_size": 3, "prompts_per_step": 1, "steps": 7, "max_new_tokens": 20, "sentence_window": 0, "lr": 0.001,
        "max_grad_norm": 0.5, "save_every": 2, "lora_layers": 2, "lora_r": 4, "lora_alpha": 8, "keep_last": 0.25,
        "fresh_samples": 3, "u_z_min": 1.0, "dedupe_jaccard": 0.9, "cap_per_prompt": 2, "cap_total": 9,
        "confirm": {"rules": "capitals"}, "runtime": {"device": "cpu", "seed": 3}}


def test_an_attack_config_stored_flat_before_its_groups_loads_with_the_same_values(tmp_path):
    from reform_engine.adv_rounds import read_rounds_config

    config = config_from_dict(AttackConfig, FLAT)  # as jobs.py reads a stored job row
    assert vars(config.reward) == {"penalty_weight": 3.0, "kl_weight": 0.1, "threshold": 0.5, "below_cost": 7.0,
                                   "clip_low": -1.0, "clip_high": 1.5, "sd_floor": 0.5, "base_samples": 6}
    assert vars(config.rloo) == {"group_size": 3, "prompts_per_step": 1, "steps": 7, "lr": 0.001, "max_grad_norm": 0.5,
                                 "save_every": 2}
    assert vars(config.response) == {"max_new_tokens": 20, "sentence_window": 0}
    assert vars(config.adapter) == {"lora_layers": 2, "lora_r": 4, "lora_alpha": 8}
    assert vars(config.keep) == {"keep_last": 0.25, "fresh_samples": 3, "u_z_min": 1.0, "dedupe_jaccard": 0.9,
                                 "cap_per_prompt": 2, "cap_total": 9}
    assert (config.judge_rm, config.prompts, config.confirm.rules, config.runtime.seed) == ("j", 5, "capitals", 3)
    (tmp_path / "config.json").write_text(json.dumps({"attack": FLAT, "data": "d.jsonl", "train_rows": "0:6"}))
    assert read_rounds_config(tmp_path).attack.rloo == config.rloo  # an adv-rounds run directory, as compare reads it


def test_flat_settings_join_the_ones_given_in_their_group_and_one_given_both_ways_is_refused():
    config = config_from_dict(AttackConfig, {"target_rm": "t", "penalty_rms": "a,b", "steps": 7, "rloo": {"lr": 0.5}})
    assert (config.rloo.steps, config.rloo.lr, config.rloo.group_size) == (7, 0.5, 4)
    with pytest.raises(JobConfigError, match=r"AttackConfig is given \['steps'\] both in rloo and outside it"):
        config_from_dict(AttackConfig, {"target_rm": "t", "penalty_rms": "a,b", "steps": 7, "rloo": {"steps": 9}})


def test_an_attack_writes_its_step_metrics_kept_samples_and_adapter(models, tmp_path):
    result = run_attack(tiny_attack_config(models), tmp_path / "run")
    steps = read_steps(tmp_path / "run")
    assert [s["step"] for s in steps] == [1, 2, 3, 4] and all(set(s) == STEP_KEYS for s in steps)
    assert all(0 <= s["eos_rate"] <= 1 and s["kl"] >= 0 and s["length"] > 0 for s in steps)
    assert steps[0]["kl"] == 0.0  # the first step samples pi0 itself
    kept = read_kept(tmp_path / "run")
    assert result.kept == len(kept) > 0 and result.steps == 4 and result.prompts == 4
    assert 0 <= result.pass_rate <= 1 and 0 <= result.base_pass_rate <= 1
    texts = [r["text"] for r in kept]
    assert len(set(texts)) == len(texts) and all(r["direction"] == "adv-rm" and r["is_inversion"] for r in kept)
    for r in kept:
        assert r["new_pair"] == {"prompt": r["prompt"], "chosen": "Sure, happy to help.", "rejected": r["text"].strip()}
        assert r["margin"] == pytest.approx(r["r_variant"] - r["r_chosen"])
        assert r["u"] == pytest.approx(r["z_target"] - r["z_penalty"]) and len(r["z_penalties"]) == 2
        assert r["confirmed"] == bool(r["confirmed_by"]) and ("judge" in r["confirmed_by"]) == (r["judge_sample"] < r["judge_chosen"])
        assert [s["piece"] for s in r["steps"]] and r["steps"][-1]["running_reward"] == pytest.approx(r["r_variant"])
        assert r["origin"] == "fresh" or r["origin"] in {"step 3", "step 4"}  # keep_last 0.5: the last two steps
    assert result.confirmed == sum(r["confirmed"] for r in kept)
    assert all(r["success"] == (r["confirmed"] and r["r_variant"] > r["r_chosen"]) for r in kept)
    with open(tmp_path / "run" / SAMPLES_FILE) as fh:
        samples = [json.loads(line) for line in fh]
    assert [s["origin"] for s in samples] == ["fresh"] * 8 + ["base"] * 8  # 4 prompts x 2 fresh samples, of each policy
    for s in samples:
        assert s["success"] == (bool(s["confirmed_by"]) and s["r_sample"] > s["r_chosen"])
        assert ("judge" in s["confirmed_by"]) == (s["judge_sample"] < s["judge_chosen"])
    assert result.success_rate == sum(s["success"] for s in samples[:8]) / 8
    assert result.base_success_rate == sum(s["success"] for s in samples[8:]) / 8
    assert 0 < result.cpu_seconds and 0 < result.process_peak_rss_gb < 64 and all(s["complete_rate"] >= s["eos_rate"] for s in steps)
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["kept"] == len(kept) and metrics["variants_path"] == str(tmp_path / "run" / KEPT_FILE)
    assert os.path.isfile(tmp_path / "run" / "checkpoint" / "adapter_config.json")
    assert read_json(tmp_path / "run" / "status.json")["state"] == "succeeded"


def _stop_in_step(n: int, monkeypatch) -> list:
    """Make the attack raise in its RLOO step ``n`` (0: never), after step n - 1 is saved -> the list of steps begun."""
    import reform_engine.attack as attack

    real, calls = attack.rloo_loss, []

    def stop(*args):
        calls.append(1)
        if len(calls) == n:
            raise RuntimeError("session ended")
        return real(*args)

    monkeypatch.setattr(attack, "rloo_loss", stop)
    return calls


def test_an_attack_stopped_mid_way_goes_on_from_its_last_step_and_ends_as_one_never_stopped(models, tmp_path, monkeypatch):
    config = tiny_attack_config(models)
    whole = run_attack(config, tmp_path / "whole")
    _stop_in_step(3, monkeypatch)
    with pytest.raises(RuntimeError, match="session ended"):
        run_attack(config, tmp_path / "stopped")
    assert [s["step"] for s in read_steps(tmp_path / "stopped")] == [1, 2]
    assert (tmp_path / "stopped" / SNAPSHOT_FILE).is_file()
    monkeypatch.undo()
    calls = _stop_in_step(0, monkeypatch)  # counts the steps, stops none
    resumed = run_attack(config, tmp_path / "stopped")
    assert "resuming at step 3 of 4" in (tmp_path / "stopped" / "log.txt").read_text()
    assert len(calls) == 2  # steps 3 and 4: 1 and 2 were not run again

    def curves(run):
        return [{k: v for k, v in s.items() if k != "seconds"} for s in read_steps(run)]

    got, want = curves(tmp_path / "stopped"), curves(tmp_path / "whole")
    assert len(got) == len(want) == 4 and all(g == pytest.approx(w, rel=1e-6, abs=1e-9) for g, w in zip(got, want))
    assert want[3]["kl"] > 0  # the policy moved: steps 3 and 4 depend on the adapter and optimiser read back
    assert [(r["text"], r["origin"]) for r in read_kept(tmp_path / "stopped")] == \
        [(r["text"], r["origin"]) for r in read_kept(tmp_path / "whole")]
    assert (resumed.kept, resumed.confirmed, resumed.pass_rate, resumed.base_pass_rate) == \
        (whole.kept, whole.confirmed, whole.pass_rate, whole.base_pass_rate)
    assert not (tmp_path / "stopped" / SNAPSHOT_FILE).exists()  # the job ended: its snapshot has served


def test_a_snapshot_of_another_config_is_not_resumed(models, tmp_path, monkeypatch):
    _stop_in_step(2, monkeypatch)
    with pytest.raises(RuntimeError, match="session ended"):
        run_attack(tiny_attack_config(models, rloo={"steps": 2}), tmp_path / "run")
    monkeypatch.undo()
    run_attack(tiny_attack_config(models, rloo={"steps": 2, "lr": 5e-3}), tmp_path / "run")
    assert "resuming" not in (tmp_path / "run" / "log.txt").read_text()
    assert [s["step"] for s in read_steps(tmp_path / "run")] == [1, 2]


def test_the_over_optimisation_arm_runs_with_penalty_weight_zero(models, tmp_path):
    result = run_attack(tiny_attack_config(models, reward={"penalty_weight": 0.0}, judge_rm="", rloo={"steps": 2}), tmp_path / "run")
    assert result.steps == 2 and all(s["penalty_term"] == 0.0 for s in read_steps(tmp_path / "run"))
    assert all(r["judge_sample"] is None for r in read_kept(tmp_path / "run"))  # no judge: the rules alone confirm


def test_kept_samples_reach_the_store_and_the_curation_queue_as_adv_rm_pairs(models, store):
    job_id = start_job(store, "attack", tiny_attack(models))
    job = wait_for(store, job_id)
    assert job["state"] == "succeeded", job["message"]
    kept = read_kept(job["run_dir"])
    stored = store.list_variants(inversions_only=False, job_id=job_id)
    assert sorted(stored["text"]) == sorted(r["text"] for r in kept) and set(stored["direction"]) == {"adv-rm"}
    pending = queue(store)
    assert sorted(pending["id"]) == sorted(stored["id"])  # all of them wait in the Curation queue
    variant = store.get_variant(int(stored["id"].iloc[0]))
    assert new_pair(variant) == ("Sure, happy to help.", variant["text"].strip())
    assert variant["trace"] and len(variant["trace"]) == len(variant["steps"])
    store.decide(int(variant["id"]), "approve", note="confirmed by hand")
    (pair,) = store.approved_pairs()
    assert (pair.chosen, pair.rejected) == ("Sure, happy to help.", variant["text"].strip())
    assert ingest_results(store, job_id)["variants"] == sorted(stored["id"].tolist())  # idempotent


def test_an_attack_survives_cancel_and_kill_like_the_other_jobs(models, store):
    long = tiny_attack(models, rloo={"steps": 100_000})
    job_id = start_job(store, "attack", long)
    run_dir = store.get_job(job_id)["run_dir"]
    wait_for(store, job_id, until=lambda j: len(read_steps(run_dir)) >= 1)
    job = store.get_job(job_id)
    cancelled = cancel_job(store, job_id, grace=5)
    assert cancelled["state"] == "cancelled" and not process_alive(job["pid"], job["proc_start"])
    assert read_json(os.path.join(run_dir, "status.json"))["state"] == "cancelled"
    assert refresh_job(store, job_id)["state"] == "cancelled" and store.list_variants(inversions_only=False).empty

    job_id = start_job(store, "attack", long)
    run_dir = store.get_job(job_id)["run_dir"]
    wait_for(store, job_id, until=lambda j: len(read_steps(run_dir)) >= 1)
    os.killpg(store.get_job(job_id)["pid"], signal.SIGKILL)
    dead = wait_for(store, job_id)
    assert dead["state"] == "failed" and dead["exit_code"] == -signal.SIGKILL
    assert dead["message"].startswith("process died: killed by SIGKILL (kill -9 or out of memory); last: step ")
    assert read_json(os.path.join(run_dir, "status.json"))["state"] == "failed"
    with open(os.path.join(run_dir, STEPS_FILE)) as fh:
        assert all(json.loads(line)["step"] for line in fh)  # the curves so far are kept, every line whole
    assert store.list_variants(inversions_only=False).empty


def test_companion_rms_take_the_targets_recipe_on_other_seeds_and_subsets_the_last_penalty_head_only(models, tmp_path):
    from reform_engine.attack import companion_configs
    from reform_engine.reward_model import RewardModelSpec
    from reform_engine.runtime import Runtime
    from reform_engine.training import TrainRewardConfig, train_reward_model

    recipe = TrainRewardConfig(data=models["data"], train_rows="0:5",
                               model=RewardModelSpec(base_model=models["policy"], lora_r=2, lora_alpha=4, lora_layers=1,
                                                     max_length=96),
                               batch_size=4, max_steps=1, runtime=Runtime(device="cpu", seed=7), eval_data=models["data"])
    target = train_reward_model(recipe, tmp_path / "target-run").checkpoint
    made = companion_configs(target, 2, True, data="ignored: the recipe names its data", rows="", runtime=Runtime(device="cpu"))
    assert [(role, c.runtime.seed, c.model.finetune, c.train_sample) for role, c in made] == [
        ("penalty 1", 8, "lora", 4), ("penalty 2", 9, "head", 4), ("judge", 108, "lora", 4)]  # 80% of 5 pairs
    assert all((c.data, c.train_rows, c.model.base_model, c.max_steps, c.eval_data) == (models["data"], "0:5", models["policy"], 1, "")
               for _, c in made)
    (only,) = companion_configs(models["target"], 1, False, data=models["data"], rows="2:",
                                runtime=Runtime(device="cpu"))  # not trained here
    assert (only[0], only[1].model.finetune, only[1].train_rows, only[1].train_sample, only[1].model.lora_layers) == (
        "penalty 1", "head", "2:", 5, 1)
