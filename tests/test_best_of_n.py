import json
import math

import pytest
import torch

from adversary_support import save_attack_models
from reform_engine.best_of_n import BestOfNConfig, judge_picks, pick, run_best_of_n, win_rate_interval
from reform_engine.rollouts import ResponseConfig
from reform_engine.runtime import Runtime


def test_all_wins_give_one_all_losses_zero_and_all_ties_one_half_each_with_a_point_interval():
    wins = win_rate_interval([1.0] * 10, seed=3)
    assert (wins.interval.estimate, wins.interval.low, wins.interval.high, wins.interval.n) == (1.0, 1.0, 1.0, 10)
    assert (wins.wins, wins.losses, wins.ties, wins.same_pick) == (10, 0, 0, 0)
    losses = win_rate_interval([0.0] * 4)
    assert (losses.interval.estimate, losses.interval.low, losses.interval.high) == (0.0, 0.0, 0.0)
    ties = win_rate_interval([0.5] * 6, [True] * 4 + [False] * 2)
    assert (ties.interval.estimate, ties.interval.low, ties.interval.high, ties.ties, ties.same_pick) == (0.5, 0.5, 0.5, 6, 4)


def test_a_mixed_record_counts_ties_half_and_its_interval_holds_the_rate():
    rate = win_rate_interval([1.0, 1.0, 1.0, 0.0, 0.5, 0.5], seed=0, n_boot=500)
    assert rate.interval.estimate == pytest.approx(4 / 6) and (rate.wins, rate.losses, rate.ties) == (3, 1, 2)
    assert 0.0 <= rate.interval.low < 4 / 6 < rate.interval.high <= 1.0
    assert win_rate_interval([1.0, 0.0] * 5, seed=1, n_boot=500) == win_rate_interval([1.0, 0.0] * 5, seed=1, n_boot=500)


def test_an_empty_record_has_no_rate_and_bad_outcomes_are_refused():
    assert math.isnan(win_rate_interval([]).interval.estimate)
    with pytest.raises(ValueError, match="1 .B's pick wins., 0.5"):
        win_rate_interval([2.0])
    with pytest.raises(ValueError, match="one per prompt"):
        win_rate_interval([1.0], [True, False])


def test_picks_take_the_highest_reward_and_the_judge_decides_between_two_picks():
    nan = float("nan")
    assert pick(torch.tensor([0.1, nan, 0.7, 0.7])) == 2 and pick(torch.tensor([nan, nan])) is None
    # columns: A, B, judge; A picks 0, B picks 1, the judge prefers 1
    assert judge_picks(torch.tensor([[2.0, 0.0, 0.1], [1.0, 3.0, 0.9]])) == (0, 1, 1.0)
    assert judge_picks(torch.tensor([[2.0, 0.0, 0.9], [1.0, 3.0, 0.1]])) == (0, 1, 0.0)
    assert judge_picks(torch.tensor([[2.0, 0.0, 0.5], [1.0, 3.0, 0.5]])) == (0, 1, 0.5)
    assert judge_picks(torch.tensor([[2.0, 3.0, 0.1], [1.0, 0.0, 0.9]])) == (0, 0, 0.5)   # the same pick: a tie
    assert judge_picks(torch.tensor([[2.0, 0.0, nan], [1.0, 3.0, 0.9]])) == (0, 1, None)  # the judge cannot score A's pick
    assert judge_picks(torch.tensor([[nan, 0.0, 0.1], [nan, 3.0, 0.9]])) == (None, 1, None)


def test_a_judge_that_is_one_of_the_compared_rms_and_a_single_sample_are_refused():
    with pytest.raises(ValueError, match="judge is RM A or RM B"):
        BestOfNConfig(rm_a="a", rm_b="b", judge_rm="b", data="d.jsonl")
    with pytest.raises(ValueError, match="n=1"):
        BestOfNConfig(rm_a="a", rm_b="b", judge_rm="j", data="d.jsonl", n=1)
    with pytest.raises(ValueError, match="fold"):
        BestOfNConfig(rm_a="a", rm_b="b", judge_rm="j", data="d.jsonl", rows="fold=5/5")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return save_attack_models(tmp_path_factory.mktemp("bon"))


def config(models: dict, rm_b: str, **fields) -> BestOfNConfig:
    return BestOfNConfig(rm_a=models["target"], rm_b=rm_b, judge_rm=models["judge"], policy=models["policy"], data=models["data"],
                         response=ResponseConfig(max_new_tokens=6, sentence_window=0), prompts_per_batch=2,
                         runtime=Runtime(device="cpu", seed=5), **fields)


def test_best_of_n_runs_end_to_end_on_tiny_models_and_writes_every_prompts_picks(models, tmp_path):
    result = run_best_of_n(config(models, models["penalty1"], rows="fold!=0/4@1", prompts=3, n=4), tmp_path / "run")
    assert result.prompts + result.skipped == 3 and result.n == 4 and result.prompts == 3
    assert result.wins + result.losses + result.ties == 3 and result.same_pick <= result.ties
    assert result.low <= result.win_rate <= result.high
    assert result.win_rate == pytest.approx((result.wins + 0.5 * result.ties) / 3)
    picks = [json.loads(line) for line in (tmp_path / "run" / "picks.jsonl").read_text().splitlines()]
    assert len(picks) == 3 and all(len(p["rewards"]) == 4 and len(p["rewards"][0]) == 3 for p in picks)
    assert all(p["text_a"] is not None and p["text_b"] is not None for p in picks)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["win_rate"] == result.win_rate and metrics["rm_b"] == models["penalty1"]


def test_the_same_checkpoint_as_a_and_b_ties_on_every_prompt(models, tmp_path):
    result = run_best_of_n(config(models, models["target"], prompts=4, n=3), tmp_path / "same")
    assert (result.prompts, result.ties, result.same_pick, result.wins, result.losses) == (4, 4, 4, 0, 0)
    assert (result.win_rate, result.low, result.high) == (0.5, 0.5, 0.5)


def test_a_later_run_on_the_same_samples_reads_them_back_and_gives_what_sampling_anew_gives(models, tmp_path, monkeypatch):
    from reform_engine.rollouts import RolloutEngine

    shared = str(tmp_path / "samples")
    fresh = {b: run_best_of_n(config(models, models[b], prompts=3, n=4), tmp_path / f"fresh-{b}") for b in ("penalty1", "penalty2")}
    first = run_best_of_n(config(models, models["penalty1"], prompts=3, n=4, samples_dir=shared), tmp_path / "first")
    assert len(list((tmp_path / "samples").glob("*.pt"))) == 2  # 3 prompts, 2 a batch
    original, sampled = RolloutEngine.sample, []
    monkeypatch.setattr(RolloutEngine, "sample", lambda self, *a, **k: (sampled.append(1), original(self, *a, **k))[1])
    second = run_best_of_n(config(models, models["penalty2"], prompts=3, n=4, samples_dir=shared), tmp_path / "second")
    assert sampled == []  # another arm's RM B: the samples are read back, not drawn again
    assert "2 of 2 batches of samples read from" in (tmp_path / "second" / "log.txt").read_text()
    for run, b in (("first", "penalty1"), ("second", "penalty2")):
        assert (tmp_path / run / "picks.jsonl").read_text() == (tmp_path / f"fresh-{b}" / "picks.jsonl").read_text()
    assert (first.win_rate, second.win_rate) == (fresh["penalty1"].win_rate, fresh["penalty2"].win_rate)
    more = run_best_of_n(config(models, models["penalty2"], prompts=4, n=4, samples_dir=shared), tmp_path / "more")
    assert sampled == [1]  # a fourth prompt: the first batch is read back, the second (other prompts) drawn
    assert [json.loads(x)["rewards"] for x in (tmp_path / "more" / "picks.jsonl").read_text().splitlines()[:2]] == \
        [json.loads(x)["rewards"] for x in (tmp_path / "second" / "picks.jsonl").read_text().splitlines()[:2]]
