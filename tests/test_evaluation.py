import json

import pytest
import torch

from conftest import make_pair
from reform_engine.evaluation import EvaluateRewardConfig, evaluate_reward_model, pairwise_metrics, win_rate
from reform_engine.data import write_jsonl
from reform_engine.runtime import Runtime


def test_win_rate_counts_ties_as_half():
    assert win_rate(torch.tensor([1.0, 0.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 2.0, 0.5])) == pytest.approx(2.5 / 4)


def test_robustness_reads_win_rates_with_the_evaluation_rule():
    import reform_engine.robustness as robustness

    assert robustness.win_rate is win_rate  # one definition: accuracy and win-rate drops cannot drift apart


def test_pairwise_metrics_on_a_hand_made_case():
    pairs = [make_pair(0, "q", "long answer", "short"), make_pair(1, "q", "tiny", "much longer"), make_pair(2, "q", "same", "SAME"),
             make_pair(3, "q", "abc", "de")]
    m = pairwise_metrics(torch.tensor([2.0, 0.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0, 0.5]), pairs)
    assert m.n == 4
    assert m.accuracy == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert m.mean_margin == pytest.approx((1 - 1 + 0 + 0.5) / 4)
    assert m.longer_baseline == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert m.shorter_baseline == pytest.approx((0 + 1 + 0.5 + 0) / 4)


def test_no_pairs_is_an_error():
    with pytest.raises(ValueError, match="no pairs"):
        pairwise_metrics(torch.tensor([]), torch.tensor([]), [])


def test_evaluate_job_writes_metrics_and_status(tiny_rm, toy_pairs, tmp_path):
    tiny_rm.save(tmp_path / "rm")
    write_jsonl(tmp_path / "pairs.jsonl", [p.to_trl() for p in toy_pairs])
    config = EvaluateRewardConfig(reward_model=str(tmp_path / "rm"), data=str(tmp_path / "pairs.jsonl"), rows="2:", runtime=Runtime(device="cpu"))
    result = evaluate_reward_model(config, tmp_path / "run")
    assert result.metrics.n == 6
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "succeeded"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]["n"] == 6


def test_evaluate_job_failure_is_recorded(tmp_path):
    config = EvaluateRewardConfig(reward_model=str(tmp_path / "missing-rm"), runtime=Runtime(device="cpu"))
    with pytest.raises(Exception):
        evaluate_reward_model(config, tmp_path / "run")
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and "missing-rm" in status["message"]
