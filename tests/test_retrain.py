import json

import pytest

from reform_engine.data import write_jsonl
from reform_engine.retrain import RetrainConfig, base_training_config, held_out_rows, run_retrain
from reform_engine.reward_model import RewardModelSpec, build_reward_model
from reform_engine.robustness import RobustnessConfig
from reform_engine.runtime import Runtime
from reform_engine.stages import RetrainRecipe
from reform_engine.tiny import save_tiny_model
from reform_engine.training import TrainRewardConfig, train_reward_model


@pytest.fixture()
def toy_file(tmp_path, toy_pairs):
    path = tmp_path / "toy.jsonl"
    write_jsonl(path, [p.to_trl() for p in toy_pairs])
    return str(path)


@pytest.fixture()
def base_run(tmp_path, toy_file):
    """A tiny base RM trained here on the first 6 toy pairs (its run directory has config.json)."""
    model = str(save_tiny_model(tmp_path / "m", seed=1, ascii_only=True))
    config = TrainRewardConfig(data=toy_file, train_rows="0:6",
                               model=RewardModelSpec(base_model=model, finetune="lora", lora_r=2, lora_alpha=4, lora_layers=1,
                                                     max_length=96),
                               batch_size=4, lr=5e-3, max_steps=2, runtime=Runtime(seed=3, device="cpu"), warmup_ratio=0.0)
    train_reward_model(config, tmp_path / "base")
    return config, str(tmp_path / "base" / "checkpoint")


@pytest.fixture()
def approved_file(tmp_path):
    path = tmp_path / "approved.jsonl"
    write_jsonl(path, [{"prompt": "Hi?", "chosen": "Hello, how can I help?", "rejected": "What."},
                       {"prompt": "Help?", "chosen": "Sure, tell me more.", "rejected": "No!!"}])
    return str(path)


def test_base_recipe_is_read_from_the_run_directory(base_run, tmp_path):
    config, checkpoint = base_run
    assert base_training_config(checkpoint) == config
    bare = build_reward_model(RewardModelSpec(base_model=config.model.base_model, finetune="head", max_length=64), device="cpu")
    assert base_training_config(bare.save(tmp_path / "elsewhere" / "rm")) is None


def test_scratch_repeats_the_base_recipe_and_finetune_continues_the_base(base_run, approved_file):
    config, checkpoint = base_run
    scratch = RetrainConfig(base_rm=checkpoint, augment_data=approved_file, runtime=Runtime(device="cpu")).training_config()
    assert scratch == TrainRewardConfig(**{**config.__dict__, "augment_data": approved_file})
    finetune = RetrainConfig(base_rm=checkpoint, augment_data=approved_file,
                             retrain=RetrainRecipe(mode="finetune", finetune_epochs=2, replay=4),
                             runtime=Runtime(device="cpu")).training_config()
    assert (finetune.init_from, finetune.epochs, finetune.max_steps, finetune.lr, finetune.train_sample) == (checkpoint, 2, 0, 5e-3, 4)
    assert (finetune.data, finetune.train_rows, finetune.augment_data, finetune.runtime.seed) == (config.data, "0:6", approved_file, 3)
    other = RetrainConfig(base_rm=checkpoint, augment_data=approved_file, data="other.jsonl", train_rows="0:2",
                          retrain=RetrainRecipe(mode="finetune", finetune_lr=1e-4)).training_config()
    assert (other.data, other.train_rows, other.lr, other.runtime.device) == ("other.jsonl", "0:2", 1e-4, "auto")


def test_a_checkpoint_trained_elsewhere_needs_its_data(tmp_path, tiny_model_dir, approved_file):
    rm = build_reward_model(RewardModelSpec(base_model=tiny_model_dir, finetune="lora", lora_layers=1, max_length=80), device="cpu")
    path = str(rm.save(tmp_path / "rm"))
    with pytest.raises(ValueError, match="give data"):
        RetrainConfig(base_rm=path, augment_data=approved_file).training_config()
    cfg = RetrainConfig(base_rm=path, augment_data=approved_file, data="d.jsonl").training_config()
    assert (cfg.model.base_model, cfg.model.finetune, cfg.model.lora_layers, cfg.model.max_length, cfg.data) == (
        tiny_model_dir, "lora", 1, 80, "d.jsonl")
    with pytest.raises(ValueError, match="not a reward-model checkpoint"):
        RetrainConfig(base_rm=str(tmp_path), augment_data=approved_file, data="d.jsonl").training_config()


def test_bad_retrain_configs_are_refused_at_construction():
    with pytest.raises(ValueError, match="mode='sometimes'"):
        RetrainConfig(base_rm="b", augment_data="a", retrain=RetrainRecipe(mode="sometimes"))
    with pytest.raises(ValueError, match="augment_data is empty"):
        RetrainConfig(base_rm="b", augment_data=" ")
    with pytest.raises(ValueError, match="unknown"):
        RetrainConfig(base_rm="b", augment_data="a", robustness=RobustnessConfig(reward_model="", perturbations="verbosity,shouting"))
    with pytest.raises(ValueError, match="start:end"):
        RetrainConfig(base_rm="b", augment_data="a", eval_rows="the rest")


def test_held_out_rows():
    assert held_out_rows("0:132") == "132:"
    assert held_out_rows("") == "" and held_out_rows("10:") == ""


def test_retrain_refuses_held_out_rows_the_base_was_trained_on(base_run, approved_file, toy_file, tmp_path):
    _, checkpoint = base_run  # trained on rows 0:6 of toy_file (its run's config.json)
    for eval_rows, shared in (("4:8", "4:6"), ("", "0:6"), ("2:3", "2:3")):
        cfg = RetrainConfig(base_rm=checkpoint, augment_data=approved_file, eval_rows=eval_rows, runtime=Runtime(device="cpu"))
        with pytest.raises(ValueError, match=rf"the held-out rows {eval_rows or 'all'} of .*toy.jsonl overlap the base RM's "
                                             rf"training rows 0:6 \(rows {shared}, from .*config.json\).*e.g. '6:'"):
            run_retrain(cfg, tmp_path / f"run{eval_rows}")
        assert not (tmp_path / f"run{eval_rows}" / "retrain").exists()  # refused before any training
    RetrainConfig(base_rm=checkpoint, augment_data=approved_file, eval_rows="6:").refuse_overlap()
    RetrainConfig(base_rm=checkpoint, augment_data=approved_file, eval_data=approved_file).refuse_overlap()  # other data
    with pytest.raises(ValueError, match=r"rows 1:2, from the data and train_rows given"):
        RetrainConfig(base_rm=checkpoint, augment_data=approved_file, data=toy_file, train_rows="0:2", eval_rows="1:").refuse_overlap()


def test_overlapping_rows_and_same_source(tmp_path):
    from reform_engine.data import overlapping_rows, same_source

    assert [overlapping_rows(a, b) for a, b in (("0:132", "132:"), ("0:132", "100:"), ("", "5:"), ("", ""), (":10", "3:4"))] == [
        "", "100:132", "5:", "0:", "3:4"]
    (tmp_path / "d.jsonl").write_text("")
    assert same_source(str(tmp_path / "d.jsonl"), str(tmp_path / "x" / ".." / "d.jsonl"))
    assert not same_source(str(tmp_path / "d.jsonl"), "org/d") and same_source("org/d", "org/d ")


def test_retrain_job_trains_evaluates_both_and_resumes(base_run, approved_file, tmp_path):
    _, checkpoint = base_run
    cfg = RetrainConfig(base_rm=checkpoint, augment_data=approved_file, eval_rows="6:",
                        robustness=RobustnessConfig(reward_model="", perturbations="verbosity,capitalization", max_length=256),
                        runtime=Runtime(device="cpu"))
    result = run_retrain(cfg, tmp_path / "run")
    assert [m.name for m in result.models] == ["base", "retrained"]
    assert [m.augment_pairs for m in result.models] == [0, 2]
    assert [t.name for t in result.stages] == ["retrain", "robustness_base", "robustness_retrained"]
    trained = json.loads((tmp_path / "run" / "retrain" / "metrics.json").read_text())
    assert trained["train_pairs"] == 6 + 2 and trained["steps"] == 2  # the base's recipe: max_steps 2 on 6 + 2 pairs
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [r["model"] for r in report["summary"]] == ["base", "retrained"]
    assert {(r["model"], r["perturbation"]) for r in report["drops"]} == {
        (m, p) for m in ("base", "retrained") for p in ("verbosity", "capitalization")}
    rob = json.loads((tmp_path / "run" / "robustness_base" / "metrics.json").read_text())
    assert rob["n_pairs"] == 2 and report["models"][0]["clean_accuracy"] == rob["clean_win_rate"]
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "succeeded" and "retrained" in status["message"]

    again = run_retrain(cfg, tmp_path / "run")
    assert all(t.reused for t in again.stages) and again.summary_rows() == result.summary_rows()


def test_a_flat_config_json_of_a_run_before_nested_configs_reads_as_no_recipe(tmp_path, approved_file):
    (tmp_path / "old" / "checkpoint").mkdir(parents=True)
    flat = {"data": "d.jsonl", "train_rows": "0:6", "model": "smollm2-135m-instruct", "finetune": "lora", "lora_layers": 8,
            "max_length": 320, "lr": 2e-4, "epochs": 2, "seed": 3, "device": "cpu", "dtype": "float32", "threads": 0}
    (tmp_path / "old" / "config.json").write_text(json.dumps(flat))
    assert base_training_config(tmp_path / "old" / "checkpoint") is None
    with pytest.raises(ValueError, match="not a reward-model checkpoint"):  # nor a spec to fall back on: asked, not crashed
        RetrainConfig(base_rm=str(tmp_path / "old" / "checkpoint"), augment_data=approved_file, data="d.jsonl").training_config()
