import json

import pytest

from reform_engine.__main__ import main
from reform_engine.data import write_jsonl


def test_train_and_eval_from_the_command_line(tiny_model_dir, toy_pairs, tmp_path, capsys):
    write_jsonl(tmp_path / "toy.jsonl", [p.to_trl() for p in toy_pairs])
    data = str(tmp_path / "toy.jsonl")
    assert main(["train-rm", "--run-dir", str(tmp_path / "run"), "--model.base-model", tiny_model_dir, "--data", data,
                 "--max-steps", "2", "--batch-size", "4", "--model.max-length", "128", "--runtime.device", "cpu",
                 "--model.lora-layers", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 2 and out["train_pairs"] == 8
    assert main(["eval-rm", "--run-dir", str(tmp_path / "ev"), "--reward-model", out["checkpoint"], "--data", data,
                 "--runtime.device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["n"] == 8
    assert main(["trace", "--reward-model", out["checkpoint"], "--prompt", "Hi", "--response", "Hey", "--runtime.device", "cpu"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_bad_flag_value_exits_with_usage(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train-rm", "--run-dir", str(tmp_path), "--batch-size", "0"])
    assert "batch_size must be >= 1" in capsys.readouterr().err


def test_trust_remote_code_is_off_unless_the_flag_is_given():
    import argparse

    from reform_engine.__main__ import add_config_args, config_from_args
    from reform_engine.training import TrainRewardConfig

    parser = argparse.ArgumentParser()
    add_config_args(parser, TrainRewardConfig)

    def parsed(*argv):
        return config_from_args(TrainRewardConfig, parser.parse_args(list(argv)))
    assert parsed().runtime.trust_remote_code is False
    assert parsed("--runtime.trust-remote-code").runtime.trust_remote_code is True
    assert parsed("--runtime.trust-remote-code=false").runtime.trust_remote_code is False
    assert parsed("--skip-invalid", "false").skip_invalid is False


def test_backup_restore_and_export_decisions_from_the_command_line(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from reform_engine.backups import BackupConfig
    from reform_engine.store import Store, verify_database

    monkeypatch.setenv("REFORM_PROJECT_DIR", str(tmp_path))
    store = Store(tmp_path / "reform.duckdb", backup=BackupConfig(every=0))
    (vid,) = store.add_variants([{"pair_id": "p", "direction": "lower", "prompt": [{"role": "user", "content": "q"}],
                                  "original_chosen": "good", "original_rejected": "bad", "text": "fine", "is_inversion": True}])
    store.decide(vid, "approve", reviewer="ann")
    assert main(["backup"]) == 0
    snapshot = Path(capsys.readouterr().out.strip())
    assert snapshot.parent == tmp_path / "backups" and verify_database(snapshot)["decisions"] == 1
    assert main(["backup", "--to", str(tmp_path / "copy.duckdb")]) == 0
    assert verify_database(tmp_path / "copy.duckdb")["decisions"] == 1
    assert main(["backup", "--to", str(tmp_path / "copy.duckdb")]) == 1
    assert "copy.duckdb already exists" in capsys.readouterr().err
    assert main(["backup", "--db", str(tmp_path / "none.duckdb")]) == 1
    assert "there is no database at" in capsys.readouterr().err

    store.decide(vid, "reject", reviewer="bea")
    assert main(["restore", "--list"]) == 0
    assert str(snapshot) in capsys.readouterr().out
    assert main(["restore"]) == 0
    out = capsys.readouterr().out
    kept = Path(out.strip().rsplit("the previous file is kept at ", 1)[1])
    assert f"from {snapshot}" in out and verify_database(kept)["decisions"] == 2  # the replaced file, with both decisions
    assert [h["reviewer"] for h in store.get_variant(vid)["history"]] == ["ann"]
    assert main(["restore", "--from", str(tmp_path / "copy.duckdb.missing")]) == 1
    assert "is not a file" in capsys.readouterr().err

    assert main(["export-decisions", "--to", str(tmp_path / "log.jsonl")]) == 0
    assert "1 decision(s) written" in capsys.readouterr().out
    (row,) = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert (row["decision"], row["reviewer"], row["variant_text"]) == ("approve", "ann", "fine")


def test_the_top_level_help_lists_every_job_even_one_whose_help_says_a_percentage(capsys):
    from reform_engine.registry import jobs

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps long lines
    assert "select lowest/random/highest p%" in out
    assert all(name in out for name in jobs())
