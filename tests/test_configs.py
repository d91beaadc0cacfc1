import argparse
import re

import pytest

from reform_engine.__main__ import main
from reform_engine.configs import (JobConfigError, add_config_args, config_argv, config_from_args, config_from_dict,
                                   flags)
from reform_engine.decoding import DecodingConfig
from reform_engine.inversions import GenerateVariantsConfig
from reform_engine.pipeline import PipelineConfig
from reform_engine.reward_model import RewardModelSpec
from reform_engine.runtime import Runtime
from reform_engine.training import TrainRewardConfig


def help_entries(text: str) -> dict[str, str]:
    """'--flag' -> its help text, from argparse's --help output."""
    entries, current = {}, None
    for line in text.splitlines():
        found = re.match(r"^  (--[\w.-]+)(?: \S+)?(?:\s{2,}(.*))?$", line)
        if found:
            current = found.group(1)
            entries[current] = (found.group(2) or "").strip()
        elif current and line.startswith(" " * 10) and line.strip():
            entries[current] += " " + line.strip()
        elif not line.strip():
            current = None
    return {flag: text.strip() for flag, text in entries.items()}


def test_variants_help_explains_every_flag_in_words(capsys):
    with pytest.raises(SystemExit) as ended:
        main(["variants", "--help"])
    assert ended.value.code == 0
    entries = help_entries(capsys.readouterr().out)
    expected = {"--run-dir", "--reward-model", "--data", "--rows", "--skip-invalid", "--fraction", "--strategy", "--directions",
                "--scored", "--max-length", "--policy", "--raise-policy", "--lower-persona", "--raise-persona", "--variants-per-pair",
                "--temperature-step", "--k-step", "--batch-size", "--decoding.k", "--decoding.alpha",
                "--decoding.temperature", "--decoding.max-new-tokens", "--decoding.stop-on-eos", "--runtime.device",
                "--runtime.dtype", "--runtime.threads", "--runtime.seed", "--runtime.trust-remote-code", "--runtime.trunk-cache",
                "--runtime.trunk-cache-gb", "--verdict.max-perplexity-ratio", "--appropriateness.source",
                "--appropriateness.judge-rm", "--appropriateness.applies-to"}
    assert set(entries) - {"--help"} == expected
    for flag, text in entries.items():
        words = re.sub(r"\(default: [^)]*\)", "", text)
        assert len(re.findall(r"[a-z]{3,}", words)) >= 3, f"{flag} is not explained: {text!r}"
    assert entries["--decoding.alpha"].startswith("fluency weight on log pi") and "(default: 1.0)" in entries["--decoding.alpha"]
    assert entries["--verdict.max-perplexity-ratio"].startswith("a variant whose perplexity under the policy is more than")
    assert "(default: 20.0)" in entries["--verdict.max-perplexity-ratio"]
    assert "(default: 'lowest_loss')" not in entries["--strategy"] and "(default: lowest_loss)" in entries["--strategy"]


def test_a_bad_yes_no_value_is_a_usage_error_not_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as ended:
        main(["train-rm", "--run-dir", str(tmp_path), "--skip-invalid", "maybe"])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert "argument --skip-invalid: 'maybe' is not a yes/no value; use true or false" in err and "Traceback" not in err
    assert not (tmp_path / "status.json").exists()


def test_nested_configs_get_prefixed_flags_without_what_the_job_sets_itself():
    options = [f.option for f in flags(PipelineConfig)]
    assert {"--base.lr", "--base.model.lora-layers", "--variants.decoding.k", "--retrain.mode", "--robustness.perturbations",
            "--runtime.device", "--runtime.seed"} <= set(options)
    assert not [o for o in options if re.match(r"--(base|variants|robustness)\.runtime\.", o)]
    assert {"--variants.reward-model", "--variants.data", "--variants.rows", "--variants.strategy", "--variants.scored",
            "--variants.decoding.direction", "--robustness.reward-model", "--base.model.trust-remote-code"}.isdisjoint(options)
    # a nested config's flags default to its parent's default, not to its own class's
    defaults = {f.option: f.default for f in flags(PipelineConfig)}
    assert (defaults["--base.train-rows"], defaults["--base.epochs"], defaults["--eval-rows"]) == ("0:132", 2, "132:")


def test_a_nested_config_round_trips_through_argv_and_json():
    config = PipelineConfig(base=TrainRewardConfig(data="d.jsonl", train_rows="-5:", model=RewardModelSpec(lora_layers=None)),
                            variants=GenerateVariantsConfig(reward_model="", decoding=DecodingConfig(k=3, alpha=0.5)),
                            runtime=Runtime(device="cpu", seed=7, trust_remote_code=True))
    parser = argparse.ArgumentParser()
    add_config_args(parser, PipelineConfig)
    argv = config_argv(config)
    assert "--base.model.lora-layers=none" in argv and "--variants.decoding.k=3" in argv and "--base.train-rows=-5:" in argv
    assert config_from_args(PipelineConfig, parser.parse_args(argv)) == config
    from reform_engine.runs import to_jsonable
    assert config_from_dict(PipelineConfig, to_jsonable(config)) == config
    # the pipeline hands each stage its runtime and data
    variants = config.variants_config("random", "base/checkpoint", "scored.jsonl")
    assert (variants.reward_model, variants.data, variants.rows, variants.strategy, variants.runtime) == (
        "base/checkpoint", "d.jsonl", "-5:", "random", Runtime(device="cpu", seed=7, trust_remote_code=True))
    assert config.train_config().runtime.seed == 7 and config.robustness_config("r").rows == "132:"


def test_a_partial_dict_takes_the_missing_fields_from_the_defaults():
    config = config_from_dict(PipelineConfig, {"base": {"lr": 1e-3, "model": {"max_length": 128}}, "runtime": {"device": "cpu"}})
    assert (config.base.lr, config.base.epochs, config.base.train_rows) == (1e-3, 2, "0:132")
    assert (config.base.model.max_length, config.base.model.lora_layers, config.base.runtime.device) == (128, 8, "cpu")


@pytest.mark.parametrize("data,needle", [({"base": {"colour": "red"}}, r"TrainRewardConfig has no field\(s\) \['colour'\]"),
                                         ({"base": {"model": "x"}}, "a RewardModelSpec is given as a str"),
                                         ({"eval_rows": {"a": 1}}, "PipelineConfig.eval_rows is a value")])
def test_a_config_dict_of_the_wrong_shape_is_a_job_config_error(data, needle):
    with pytest.raises(JobConfigError, match=needle):
        config_from_dict(PipelineConfig, data)


@pytest.mark.parametrize("make,needle", [
    (lambda: TrainRewardConfig(train_rows="first half"), "rows='first half'; write 'start:end'"),
    (lambda: PipelineConfig(eval_rows="the rest"), "rows='the rest'"),
    (lambda: GenerateVariantsConfig(reward_model="x", rows="1-5"), "rows='1-5'"),
    (lambda: GenerateVariantsConfig(reward_model="x", fraction=0.0), r"in \(0, 1\]")])
def test_row_ranges_and_shares_are_checked_when_a_config_is_made(make, needle):
    with pytest.raises(ValueError, match=needle):
        make()
