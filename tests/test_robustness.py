import json

import pytest
import torch

from conftest import make_pair
from reform_engine.data import write_jsonl
from reform_engine.evaluation import win_rate
from reform_engine.robustness import (RobustnessConfig, capital_ratio, evaluate_robustness, perturb_pairs, repetition_score,
                                      read_pair_scores, robustness_report, spurious_indicators)
from reform_engine.runtime import Runtime


def test_perturb_pairs_changes_only_the_named_side():
    pairs = [make_pair(0, "q", "Good answer.", "Bad answer.")]
    (verb,) = perturb_pairs(pairs, "verbosity")
    assert verb.chosen == "Good answer." and verb.rejected.startswith("Bad answer. ")
    (caps,) = perturb_pairs(pairs, "capitalization")
    assert (caps.chosen, caps.rejected) == ("GOOD ANSWER.", "Bad answer.")
    with pytest.raises(ValueError, match="choose from"):
        perturb_pairs(pairs, "nope")


class LengthLovingRM:
    """A hand-made RM whose reward is the response length: the win-rate drop under verbosity is known."""

    is_causal = False

    def __init__(self, tokenizer):
        from reform_engine.reward_model import RewardModelSpec
        self.tokenizer = tokenizer
        self.spec = RewardModelSpec(base_model="len", finetune="head", use_chat_template=False, max_length=4096)
        self.device = torch.device("cpu")

    def score(self, ids, mask):
        return mask.sum(-1).float()


def test_win_rate_drop_on_a_hand_made_case():
    from reform_engine.tiny import build_tiny_tokenizer

    rm = LengthLovingRM(build_tiny_tokenizer())
    # chosen longer in 3 of 4 pairs -> clean win rate 0.75; verbosity pads every rejected response by
    # 2-3 filler sentences (>= 60 characters), which makes all four rejected responses longer.
    pairs = [make_pair(0, "q", "A long and careful answer.", "No."), make_pair(1, "q", "Another good one here.", "Nah."),
             make_pair(2, "q", "Yes, that works well.", "Hm."), make_pair(3, "q", "Ok.", "A wrong but wordy answer.")]
    res = robustness_report(rm, pairs, ["verbosity", "capitalization"])
    assert res.clean_win_rate == 0.75
    by_name = {r.name: r for r in res.per_perturbation}
    assert by_name["verbosity"].perturbed_win_rate == 0.0 and by_name["verbosity"].drop == 0.75
    assert by_name["capitalization"].drop == 0.0  # same length, same reward
    assert res.mean_drop == pytest.approx(0.375)
    assert res.indicators.length_corr > 0.9


def test_surface_features_and_indicators():
    assert capital_ratio("ABcd") == 0.5 and capital_ratio("123") == 0.0
    assert repetition_score("a b c d") == 0.0 and repetition_score("a b c a b c") == pytest.approx(2 / 4)
    ind = spurious_indicators(["a", "bb", "ccc", "dddd", "eeeee"], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert ind.length_corr == pytest.approx(1.0) and ind.extreme_negative_share == 0.0


def test_evaluate_robustness_job(tiny_rm, toy_pairs, tmp_path):
    tiny_rm.save(tmp_path / "rm")
    write_jsonl(tmp_path / "d.jsonl", [p.to_trl() for p in toy_pairs])
    cfg = RobustnessConfig(reward_model=str(tmp_path / "rm"), data=str(tmp_path / "d.jsonl"), perturbations="verbosity,markdown",
                           runtime=Runtime(device="cpu"))
    res = evaluate_robustness(cfg, tmp_path / "run")
    assert res.n_pairs == 8 and [r.name for r in res.per_perturbation] == ["verbosity", "markdown"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["mean_drop"] == pytest.approx(res.mean_drop)
    scores = read_pair_scores(tmp_path / "run")  # every pair's rewards: the items of any interval on these figures
    assert scores.pair_ids == [f"d.jsonl:{i}" for i in range(8)] and list(scores.perturbed) == ["verbosity", "markdown"]
    assert scores.wins().mean() == pytest.approx(res.clean_win_rate)
    for r in res.per_perturbation:
        assert scores.wins(r.name).mean() == pytest.approx(r.perturbed_win_rate) and scores.drops(r.name).mean() == pytest.approx(r.drop)
    assert scores.drops().mean() == pytest.approx(res.mean_drop)
    assert read_pair_scores(tmp_path / "nowhere") is None
    with pytest.raises(ValueError, match="unknown"):
        RobustnessConfig(reward_model="x", perturbations="verbosity,shouting")


def test_grouped_scoring_gives_the_win_rates_of_rescoring_each_perturbed_set(tiny_rm, toy_pairs):
    from reform_engine.scoring import score_pairs
    names = ["verbosity", "capitalization", "prompt_echo", "misspelling"]
    res = robustness_report(tiny_rm, toy_pairs, names, seed=3, batch_size=4)
    for r in res.per_perturbation:
        s = score_pairs(tiny_rm, perturb_pairs(toy_pairs, r.name, 3), share_prompt=False)
        assert r.perturbed_win_rate == pytest.approx(win_rate(s.r_chosen, s.r_rejected))
    clean = score_pairs(tiny_rm, toy_pairs, share_prompt=False)
    assert res.clean_win_rate == pytest.approx(win_rate(clean.r_chosen, clean.r_rejected))


def test_robustness_with_the_trunk_cache_equals_without_and_a_model_on_the_same_trunk_only_reads(tiny_model_dir, toy_pairs, tmp_path):
    from reform_engine.reward_model import RewardModelSpec, build_reward_model

    write_jsonl(tmp_path / "d.jsonl", [p.to_trl() for p in toy_pairs])
    for seed in (0, 1):  # two RMs sharing the frozen layer 0: LoRA on layer 1 and the head differ
        spec = RewardModelSpec(base_model=tiny_model_dir, finetune="lora", lora_r=4, lora_alpha=8, lora_layers=1)
        build_reward_model(spec, device="cpu", seed=seed).save(tmp_path / f"rm{seed}")
    shared = str(tmp_path / "shared")

    def run(rm, setting, name):
        cfg = RobustnessConfig(reward_model=str(tmp_path / rm), data=str(tmp_path / "d.jsonl"), perturbations="verbosity,markdown",
                               runtime=Runtime(device="cpu", trunk_cache=setting))
        return evaluate_robustness(cfg, tmp_path / name)

    cold, first, second = run("rm0", "off", "cold"), run("rm0", shared, "first"), run("rm1", shared, "second")
    assert first.clean_win_rate == cold.clean_win_rate and first.mean_drop == cold.mean_drop
    assert [r.perturbed_win_rate for r in first.per_perturbation] == [r.perturbed_win_rate for r in cold.per_perturbation]
    assert first.indicators.length_corr == pytest.approx(cold.indicators.length_corr, abs=1e-5)
    # 8 prompts + 8 x (2 clean + 2 perturbed) responses, computed once, then read by the other model
    assert (first.trunk_cache["misses"], second.trunk_cache["hits"], second.trunk_cache["misses"]) == (40, 40, 0)
    assert "trunk cache: 40 hits, 0 misses" in (tmp_path / "second" / "log.txt").read_text()
