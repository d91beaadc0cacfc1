import json

import pytest

from reform_engine.__main__ import main
from reform_engine.data import write_jsonl


def test_train_and_eval_from_the_command_line(tiny_model_dir, toy_pairs, tmp_path, capsys):
    write_jsonl(tmp_path / "toy.jsonl", [p.to_trl() for p in toy_pairs])
    data = str(tmp_path / "toy.jsonl")
    assert main(["train-rm", "--run-dir", str(tmp_path / "run"), "--model", tiny_model_dir, "--data", data, "--max-steps", "2",
                 "--batch-size", "4", "--max-length", "128", "--device", "cpu", "--lora-layers", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 2 and out["train_pairs"] == 8
    assert main(["eval-rm", "--run-dir", str(tmp_path / "ev"), "--reward-model", out["checkpoint"], "--data", data,
                 "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["n"] == 8
    assert main(["trace", "--reward-model", out["checkpoint"], "--prompt", "Hi", "--response", "Hey", "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_bad_flag_value_exits_with_usage(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train-rm", "--run-dir", str(tmp_path), "--batch-size", "0"])
    assert "batch_size must be >= 1" in capsys.readouterr().err


def test_trust_remote_code_is_off_unless_the_flag_is_given():
    import argparse

    from reform_engine.__main__ import add_config_args
    from reform_engine.training import TrainRewardConfig

    parser = argparse.ArgumentParser()
    add_config_args(parser, TrainRewardConfig)
    assert parser.parse_args([]).trust_remote_code is False
    assert parser.parse_args(["--trust-remote-code"]).trust_remote_code is True
    assert parser.parse_args(["--trust-remote-code=false"]).trust_remote_code is False
    assert parser.parse_args(["--skip-invalid", "false"]).skip_invalid is False
