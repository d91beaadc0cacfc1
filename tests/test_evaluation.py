import json

import math
import pytest
import torch

from conftest import make_pair
from reform_engine.evaluation import (EvaluateRewardConfig, bootstrap_diff, bootstrap_mean, evaluate_reward_model, pair_wins,
                                      paired_bootstrap_diff, pairwise_metrics, win_rate)
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


def test_the_bootstrap_of_a_constant_is_that_constant():
    got = bootstrap_mean([0.7] * 25, n_boot=200, seed=3)
    assert (got.estimate, got.low, got.high, got.n) == pytest.approx((0.7, 0.7, 0.7, 25))


def test_the_bootstrap_of_two_items_spans_both_and_of_one_in_four_ends_at_three_quarters():
    # two items: the resampled mean is 0, 0.5 or 1 with chances 1/4, 1/2, 1/4, so the 2.5% and 97.5% points are 0 and 1
    two = bootstrap_mean([0.0, 1.0], n_boot=4000, seed=0)
    assert (two.estimate, two.low, two.high) == (0.5, 0.0, 1.0)
    # [0, 0, 0, 1]: the mean is k/4 with k ~ Binomial(4, 1/4); P(k = 0) = 0.32 > 2.5% and P(k <= 2) = 0.95 < 97.5% < P(k <= 3)
    one_in_four = bootstrap_mean([0, 0, 0, 1], n_boot=4000, seed=0)
    assert (one_in_four.estimate, one_in_four.low, one_in_four.high) == (0.25, 0.0, 0.75)


def test_the_bootstrap_of_a_half_rate_over_a_hundred_items_matches_the_normal_interval():
    got = bootstrap_mean([0, 1] * 50, seed=1)  # sd of the mean 0.05: 0.5 -+ 1.96 * 0.05
    assert got.estimate == 0.5 and got.low == pytest.approx(0.402, abs=0.015) and got.high == pytest.approx(0.598, abs=0.015)


def test_a_bootstrap_is_repeatable_for_its_seed():
    values = [0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1]
    assert bootstrap_mean(values, seed=5) == bootstrap_mean(values, seed=5)
    assert bootstrap_mean(values, n_boot=50, seed=5) != bootstrap_mean(values, n_boot=50, seed=6)


def test_the_paired_bootstrap_sees_a_constant_gain_that_separate_resampling_blurs():
    base = [0.0, 1.0, 0.5, 1.0, 0.0, 0.0, 1.0, 1.0]
    better = [v + 0.25 for v in base]
    paired = paired_bootstrap_diff(better, base, n_boot=500)
    assert (paired.estimate, paired.low, paired.high) == pytest.approx((0.25, 0.25, 0.25))
    unpaired = bootstrap_diff(better, base, n_boot=500)
    assert unpaired.estimate == pytest.approx(0.25) and unpaired.low < 0 and unpaired.high > 0.5


def test_pair_wins_are_the_items_of_the_win_rate():
    r_c, r_r = torch.tensor([1.0, 0.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 2.0, 0.5])
    assert pair_wins(r_c, r_r).tolist() == [1.0, 0.0, 0.5, 1.0]
    assert pair_wins(r_c, r_r).mean() == win_rate(r_c, r_r)


def test_bootstrap_refuses_what_it_cannot_resample_and_has_no_interval_without_items():
    with pytest.raises(ValueError, match="drop the NaN items"):
        bootstrap_mean([0.0, float("nan")])
    with pytest.raises(ValueError, match="paired values need the same items: 2 vs 3"):
        paired_bootstrap_diff([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match=r"level in \(0, 1\)"):
        bootstrap_mean([1.0], level=95)
    empty = bootstrap_mean([])
    assert empty.n == 0 and empty.estimate != empty.estimate and bootstrap_diff([], [1.0]).n == 0


def test_the_paired_ratio_of_two_means_has_a_known_estimate_and_an_interval_around_it():
    from reform_engine.evaluation import paired_bootstrap_ratio

    a, b = [0.1, 0.2, 0.3, 0.2] * 25, [0.2, 0.4, 0.6, 0.4] * 25     # a is exactly half of b pair by pair
    ci = paired_bootstrap_ratio(a, b, seed=0)
    assert ci.estimate == pytest.approx(0.5) and ci.low == pytest.approx(0.5) and ci.high == pytest.approx(0.5) and ci.n == 100
    noisy = paired_bootstrap_ratio([0.0, 1.0, 0.5, 0.0] * 10, [0.5, 0.5, 0.5, 0.5] * 10, seed=0)
    assert noisy.estimate == pytest.approx(0.75) and noisy.low < 0.75 < noisy.high
    assert math.isnan(paired_bootstrap_ratio([1.0, 0.0], [0.0, 0.0]).estimate)
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap_ratio([1.0], [1.0, 2.0])
