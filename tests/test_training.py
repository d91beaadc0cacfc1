import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from reform_engine.data import DEMO_PATH, write_jsonl
from reform_engine.evaluation import EvaluateRewardConfig, evaluate_reward_model
from reform_engine.reward_model import RewardModelSpec, load_reward_model
from reform_engine.runtime import Runtime
from reform_engine.scoring import encode, reward_trace, score_pairs, score_sequences
from reform_engine.training import (TrainRewardConfig, _launched_accelerator, _shard, batch_order, bradley_terry_loss,
                                    train_reward_model)


def test_bradley_terry_loss_literal():
    loss = bradley_terry_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 2.0]))
    assert loss.item() == pytest.approx((0.3132617 + 0.6931472) / 2, abs=1e-6)


def test_batch_order_covers_every_pair_once():
    order = batch_order([5, 3, 9, 1, 7, 2, 8], 3, torch.Generator().manual_seed(0))
    assert sorted(i for b in order for i in b) == list(range(7)) and all(len(b) <= 3 for b in order)


@pytest.fixture()
def toy_file(tmp_path, toy_pairs):
    path = tmp_path / "toy.jsonl"
    write_jsonl(path, [p.to_trl() for p in toy_pairs])
    return str(path)


def _config(model_dir, data, seed=0, model=(), runtime=(), **kw):
    """The toy recipe; ``model`` and ``runtime``: fields of its RewardModelSpec and Runtime to change."""
    spec = RewardModelSpec(**{"base_model": model_dir, "finetune": "lora", "lora_r": 4, "lora_alpha": 8, "max_length": 128,
                              **dict(model)})
    base = dict(model=spec, data=data, batch_size=4, epochs=8, lr=5e-3, runtime=Runtime(**{"device": "cpu", "seed": seed,
                                                                                          **dict(runtime)}),
                warmup_ratio=0.0)
    return TrainRewardConfig(**{**base, **kw})


def test_training_learns_a_separable_toy_set(tiny_model_dir, toy_file, tmp_path):
    result = train_reward_model(_config(tiny_model_dir, toy_file, eval_data=toy_file), tmp_path / "run")
    assert result.steps == 16 and result.train_pairs == 8
    assert result.loss_curve[-1] < result.loss_curve[0]
    assert result.eval.accuracy == 1.0 and result.eval.mean_margin > 0
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "succeeded" and status["progress"] == 1.0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lr"] == 5e-3


def test_training_is_deterministic_for_a_seed(tiny_model_dir, toy_file, tmp_path):
    runs = [train_reward_model(_config(tiny_model_dir, toy_file, epochs=2, seed=s), tmp_path / f"r{i}")
            for i, s in enumerate([7, 7, 8])]
    heads = [load_file(str(tmp_path / f"r{i}" / "checkpoint" / "head.safetensors"))["weight"] for i in range(3)]
    assert runs[0].loss_curve == runs[1].loss_curve and torch.equal(heads[0], heads[1])
    assert runs[0].loss_curve != runs[2].loss_curve


def test_checkpoint_rebuilds_the_trained_model(tiny_model_dir, toy_file, tmp_path, toy_pairs):
    result = train_reward_model(_config(tiny_model_dir, toy_file, epochs=1), tmp_path / "run")
    rm = load_reward_model(result.checkpoint, device="cpu")
    scores = score_pairs(rm, toy_pairs)
    ev = evaluate_reward_model(EvaluateRewardConfig(reward_model=result.checkpoint, data=toy_file, runtime=Runtime(device="cpu")),
                               tmp_path / "ev")
    assert ev.metrics.mean_margin == pytest.approx(float(scores.margins.mean()), abs=1e-5)


def test_invalid_config_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainRewardConfig(batch_size=0)
    with pytest.raises(ValueError, match="finetune must be one of"):
        TrainRewardConfig(model=RewardModelSpec(finetune="adapter"))


def test_failed_run_is_marked_failed(tiny_model_dir, tmp_path):
    with pytest.raises(Exception):
        train_reward_model(_config(tiny_model_dir, str(tmp_path / "nope.jsonl")), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "failed"


@pytest.mark.real_model
def test_real_smollm2_reward_model_on_the_demo_set(tmp_path):
    """Integration: the offline SmolLM2 backbone, LoRA, a few steps on the embedded demo pairs."""
    config = TrainRewardConfig(data=str(DEMO_PATH), train_rows="0:16", eval_data=str(DEMO_PATH), eval_rows="150:165",
                               batch_size=4, epochs=1, model=RewardModelSpec(max_length=192, lora_layers=2),
                               runtime=Runtime(device="cpu"))
    result = train_reward_model(config, tmp_path / "run")
    assert result.steps == 4 and result.eval.n == 15
    assert all(torch.isfinite(torch.tensor(result.loss_curve)))
    rm = load_reward_model(result.checkpoint, device="cpu")
    assert rm.tokenizer.pad_token is not None and rm.spec.base_model == "smollm2-135m-instruct"
    prompt = [{"role": "user", "content": "How do I make a cup of tea?"}]
    response = "Boil water, pour it over a tea bag, wait three minutes, then remove the bag."
    trace = reward_trace(rm, prompt, response)
    full = score_sequences(rm, [encode(rm.tokenizer, prompt, response, max_length=192).ids])[0].item()
    assert "".join(trace.pieces) == response and trace.final == pytest.approx(full, abs=1e-4)


def test_augmented_retrain_and_fine_tune_from_a_checkpoint(tiny_model_dir, toy_file, tmp_path, toy_pairs):
    base = train_reward_model(_config(tiny_model_dir, toy_file, epochs=1), tmp_path / "base")
    extra = tmp_path / "extra.jsonl"
    write_jsonl(extra, [p.to_trl() for p in toy_pairs[:4]])
    scratch = train_reward_model(_config(tiny_model_dir, toy_file, epochs=1, augment_data=str(extra)), tmp_path / "scratch")
    assert scratch.train_pairs == 12 and scratch.steps == 3
    # a vanishing learning rate leaves the fine-tuned model where it started: at the base checkpoint
    tuned = train_reward_model(_config(tiny_model_dir, toy_file, epochs=1, init_from=base.checkpoint, lr=1e-12), tmp_path / "ft")
    before = score_pairs(load_reward_model(base.checkpoint, device="cpu"), toy_pairs).margins
    after = score_pairs(load_reward_model(tuned.checkpoint, device="cpu"), toy_pairs).margins
    fresh = score_pairs(load_reward_model(train_reward_model(_config(tiny_model_dir, toy_file, epochs=1, lr=1e-12, seed=5),
                                                             tmp_path / "fresh").checkpoint, device="cpu"), toy_pairs).margins
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)
    assert not torch.allclose(fresh, before, atol=1e-3)
    assert json.loads((tmp_path / "ft" / "checkpoint" / "reward_model.json").read_text())["lora_r"] == 4


def test_train_sample_takes_a_seeded_subset_then_adds_augmentation(tiny_model_dir, toy_file, tmp_path, toy_pairs):
    extra = tmp_path / "extra.jsonl"
    write_jsonl(extra, [p.to_trl() for p in toy_pairs[:2]])
    result = train_reward_model(_config(tiny_model_dir, toy_file, epochs=1, train_sample=3, augment_data=str(extra)), tmp_path / "s")
    assert result.train_pairs == 5 and result.steps == 2
    assert "random sample of 3 original pairs" in (tmp_path / "s" / "log.txt").read_text()
    with pytest.raises(ValueError, match="train_sample"):
        _config(tiny_model_dir, toy_file, train_sample=-1)


def test_a_single_process_never_touches_accelerate(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert _launched_accelerator("cpu") is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _launched_accelerator("cpu") is None
    assert _shard([[0, 1], [2, 3], [4]], None) == [[0, 1], [2, 3], [4]]


def test_shard_gives_every_process_the_same_number_of_batches():
    class TwoProcesses:
        num_processes, process_index = 2, 1

    batches = [[0], [1], [2], [3], [4]]
    assert _shard(batches, TwoProcesses()) == [[1], [3], [0]]  # wraps around so both processes take 3 steps
    TwoProcesses.process_index = 0
    assert _shard(batches, TwoProcesses()) == [[0], [2], [4]]


@pytest.mark.parametrize("finetune", ["lora", "top"])
def test_cached_training_gives_the_uncached_losses_over_two_epochs_and_logs_the_cache(tiny_model_dir, toy_file, tmp_path,
                                                                                    finetune):
    cfg = dict(epochs=2, model={"lora_layers": 1, "finetune": finetune}, eval_data=toy_file)
    off = train_reward_model(_config(tiny_model_dir, toy_file, runtime={"trunk_cache": "off"}, **cfg), tmp_path / "off")
    on = train_reward_model(_config(tiny_model_dir, toy_file, **cfg), tmp_path / "on")
    assert len(on.loss_curve) == 4
    torch.testing.assert_close(torch.tensor(on.loss_curve), torch.tensor(off.loss_curve), atol=1e-5, rtol=0)
    assert on.eval.mean_margin == pytest.approx(off.eval.mean_margin, abs=1e-5)
    # epoch 1 computes 8 prompts + 16 responses, epoch 2 and the evaluation read them
    assert {k: on.trunk_cache[k] for k in ("split", "hits", "misses", "entries")} == {"split": 1, "hits": 48, "misses": 24, "entries": 24}
    assert off.trunk_cache == {"off": "trunk cache: off"}
    metrics = json.loads((tmp_path / "on" / "metrics.json").read_text())
    assert metrics["trunk_cache"]["bytes"] == on.trunk_cache["bytes"] > 0
    assert "trunk cache: 48 hits, 24 misses; 24 entries" in (tmp_path / "on" / "log.txt").read_text()


def test_full_fine_tuning_and_lora_on_every_layer_train_without_the_cache(tiny_model_dir, toy_file, tmp_path):
    full = train_reward_model(_config(tiny_model_dir, toy_file, epochs=1, model={"finetune": "full"}), tmp_path / "full")
    every = train_reward_model(_config(tiny_model_dir, toy_file, epochs=1, model={"lora_layers": None}), tmp_path / "every")
    assert full.trunk_cache == {"off": "trunk cache: bypassed (full fine-tuning: nothing is frozen)"}
    assert every.trunk_cache == {"off": "trunk cache: bypassed (nothing frozen below the first trainable layer (LoRA on every layer))"}
    assert not (tmp_path / "full" / "trunk_cache").exists() and not (tmp_path / "every" / "trunk_cache").exists()


def test_training_past_the_cache_cap_still_gives_the_uncached_losses(tiny_model_dir, toy_file, tmp_path):
    off = train_reward_model(_config(tiny_model_dir, toy_file, epochs=2, model={"lora_layers": 1}, runtime={"trunk_cache": "off"}),
                             tmp_path / "off")
    capped = train_reward_model(_config(tiny_model_dir, toy_file, epochs=2, model={"lora_layers": 1},
                                        runtime={"trunk_cache_gb": 20_000 / 2**30}), tmp_path / "capped")
    assert 0 < capped.trunk_cache["written_bytes"] <= 20_000 and capped.trunk_cache["not_stored_over_cap"] > 0
    torch.testing.assert_close(torch.tensor(capped.loss_curve), torch.tensor(off.loss_curve), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="trunk_cache='off' turns the cache off"):
        _config(tiny_model_dir, toy_file, runtime={"trunk_cache_gb": 0})


def test_two_launched_processes_each_cache_their_shard_then_read_each_others(tiny_model_dir, toy_file, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "reform_engine", "train-rm",
           "--run-dir", str(tmp_path / "run"), "--data", toy_file, "--model.base-model", tiny_model_dir, "--model.lora-layers", "1",
           "--model.lora-r", "4", "--batch-size", "2", "--epochs", "3", "--model.max-length", "128", "--runtime.device", "cpu"]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 6  # 4 batches of 2 pairs an epoch, shared by 2 processes, 3 epochs
    # the main process computed its half of epoch 1 (2 batches x 2 pairs x 3 entries) and read every later one,
    # including those the other process stored
    assert {k: metrics["trunk_cache"][k] for k in ("hits", "misses", "entries")} == {"hits": 24, "misses": 12, "entries": 24}
    assert len(list((tmp_path / "run" / "trunk_cache").glob("*/part-*.bin"))) == 2


def test_the_default_recipe_is_the_one_cross_validated_on_hh_everywhere():
    from reform_engine.pipeline import PipelineConfig

    recipe = TrainRewardConfig()
    assert (recipe.epochs, recipe.lr, recipe.batch_size, recipe.runtime.seed) == (2, 2e-4, 8, 0)
    assert (recipe.model.finetune, recipe.model.lora_layers, recipe.model.lora_r, recipe.model.max_length) == ("lora", 8, 16, 320)
    base = PipelineConfig().base  # the pipeline's base differs only in the rows it trains on
    assert dataclasses.replace(base, train_rows=recipe.train_rows) == recipe


def killed_at_step(config, run_dir, step: int, monkeypatch) -> None:
    """Train until the loss of ``step`` is asked for, then die as a session's end kills a job."""
    import reform_engine.training as training

    original, calls = training.bradley_terry_loss, []

    def loss(*args):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt("the session ended")
        return original(*args)
    with monkeypatch.context() as patch:
        patch.setattr(training, "bradley_terry_loss", loss)
        with pytest.raises(KeyboardInterrupt):
            train_reward_model(config, run_dir)


def test_a_training_run_killed_mid_epoch_resumes_from_its_saved_state_with_the_same_loss_curve_and_weights(
        tiny_model_dir, toy_file, tmp_path, monkeypatch):
    import reform_engine.training as training

    config = _config(tiny_model_dir, toy_file, epochs=3, batch_size=3, model=(("lora_layers", 1),))  # 3 steps an epoch
    whole = train_reward_model(config, tmp_path / "whole")
    monkeypatch.setattr(training, "RESUME_EVERY_S", 0.0)  # save the state after every step
    killed_at_step(config, tmp_path / "run", 6, monkeypatch)
    assert (tmp_path / "run" / training.RESUME).is_file()
    resumed = train_reward_model(config, tmp_path / "run")
    assert "resuming from step 5/9" in (tmp_path / "run" / "log.txt").read_text()
    assert resumed.steps == whole.steps == 9 and resumed.loss_curve == whole.loss_curve
    for name in ("head.safetensors", "adapter/adapter_model.safetensors"):
        mine, theirs = load_file(str(tmp_path / "run" / "checkpoint" / name)), load_file(str(tmp_path / "whole" / "checkpoint" / name))
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not (tmp_path / "run" / training.RESUME).exists()  # served: removed with the checkpoint written


def test_a_saved_training_state_of_another_config_is_not_resumed(tiny_model_dir, toy_file, tmp_path, monkeypatch):
    import reform_engine.training as training

    monkeypatch.setattr(training, "RESUME_EVERY_S", 0.0)
    config = _config(tiny_model_dir, toy_file, epochs=1)
    killed_at_step(config, tmp_path / "run", 2, monkeypatch)
    other = train_reward_model(dataclasses.replace(config, lr=1e-3), tmp_path / "run")
    fresh = train_reward_model(dataclasses.replace(config, lr=1e-3), tmp_path / "fresh")
    assert "is another config's; starting over" in (tmp_path / "run" / "log.txt").read_text()
    assert other.loss_curve == fresh.loss_curve
