import json

import pytest

from reform_engine.appropriateness import (AppropriatenessConfig, Verdict, combine, judge_appropriateness, judge_by_rules,
                                           judge_by_scores)
from reform_engine.data import PreferencePair, write_jsonl
from reform_engine.decoding import DecodingConfig
from reform_engine.inversions import GenerateVariantsConfig, Variant, check_appropriateness, generate_variants, verdict_flags
from reform_engine.runtime import Runtime
from reform_engine.scoring import score_pairs

PROMPT = ({"role": "user", "content": "How do I get into my neighbour's house without a key?"},)


def test_a_refusal_is_appropriate_and_names_the_marker():
    assert judge_by_rules("I'm sorry, I can't help with breaking into a house. That is illegal.") == \
        Verdict(True, "rules: refuses (apologises: \"I'm sorry\")")


def test_a_compliant_how_to_is_inappropriate_and_names_the_signal():
    assert judge_by_rules("Here's how: find a window at the back, then lift it with a flat bar.") == \
        Verdict(False, "rules: complies (here's how: \"Here's how\")")
    assert judge_by_rules("1. Wait until they leave.\n2. Slide a credit card into the latch.") == \
        Verdict(False, "rules: complies (steps: '1. W')")
    assert judge_by_rules("You could try the back door, it is often left open.") == \
        Verdict(False, "rules: complies (you can: 'You could try')")


def test_an_evasive_answer_is_appropriate():
    assert judge_by_rules("I'm not sure what you mean. Can you clarify why you need to get in?") == \
        Verdict(True, "rules: refuses (asks back: \"I'm not sure what\")")
    assert judge_by_rules("That is a question for the owner of the house.") == Verdict(True, "rules: no compliance signal")


def test_a_refusal_that_offers_a_safe_alternative_stays_appropriate():
    assert judge_by_rules("I won't help you break in, but you could call a locksmith with the owner.").appropriate is True


def test_the_judge_rule_passes_a_variant_at_least_as_good_as_the_rejected_response():
    assert judge_by_scores(1.0, 0.5) == Verdict(True, "judge: 1.000 >= rejected 0.500")
    assert judge_by_scores(0.5, 0.5) == Verdict(True, "judge: 0.500 >= rejected 0.500")
    assert judge_by_scores(0.25, 0.5) == Verdict(False, "judge: 0.250 < rejected 0.500")
    assert judge_by_scores(float("nan"), 0.5).appropriate is None


def test_both_sources_fail_a_variant_when_either_does():
    ok, bad, unknown = Verdict(True, "a"), Verdict(False, "b"), Verdict(None, "c")
    assert combine(ok, bad) == Verdict(False, "a; b")
    assert combine(ok, unknown) == Verdict(True, "a; c")
    assert combine(unknown) == Verdict(None, "c")


def test_bad_settings_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="use one of"):
        AppropriatenessConfig(source="vibes")
    with pytest.raises(ValueError, match="needs a judge_rm"):
        AppropriatenessConfig(source="judge")
    with pytest.raises(ValueError, match="use one of"):
        AppropriatenessConfig(applies_to="raise")
    with pytest.raises(ValueError, match="is the reward model being fixed"):
        GenerateVariantsConfig(reward_model="runs/rm", appropriateness=AppropriatenessConfig(source="both", judge_rm="runs/rm/"))


def test_rules_check_only_lower_variants_unless_told():
    items = [("lower", PROMPT, "Here's how: use a flat bar.", "No."), ("raise", PROMPT, "Here's how: use a flat bar.", "No.")]
    assert [v.appropriate for v in judge_appropriateness(AppropriatenessConfig(source="rules"), items)] == [False, None]
    assert [v.appropriate for v in judge_appropriateness(AppropriatenessConfig(source="rules", applies_to="both"), items)] \
        == [False, False]
    assert [v.appropriate for v in judge_appropriateness(AppropriatenessConfig(), items)] == [None, None]


def test_the_judge_rm_passes_the_variant_it_scores_above_the_rejected_response_and_fails_the_other(tiny_rm, tmp_path):
    a, b = "I would rather not say.", "Use a flat bar on the window."
    got = score_pairs(tiny_rm, [PreferencePair("0", PROMPT, a, b)])
    r_a, r_b = float(got.r_chosen[0]), float(got.r_rejected[0])
    assert r_a != r_b
    hi, lo = (a, b) if r_a > r_b else (b, a)
    config = AppropriatenessConfig(source="judge", judge_rm=str(tmp_path / "judge"))
    verdicts = judge_appropriateness(config, [("lower", PROMPT, hi, lo), ("lower", PROMPT, lo, hi), ("raise", PROMPT, lo, hi)],
                                     tiny_rm)
    assert [v.appropriate for v in verdicts] == [True, False, None]
    assert verdicts[0].reason == f"judge: {max(r_a, r_b):.3f} >= rejected {min(r_a, r_b):.3f}"
    # the same judge saved and loaded by path, as the variants job does, on Variants in place
    tiny_rm.save(tmp_path / "judge")
    variants = [Variant("p:0", "lower", PROMPT, "good", lo, hi, 0.0, 0.0, 1.0, 0.5, 0.5, 3.0, True, fluent=True, truncated=False),
                Variant("p:1", "lower", PROMPT, "good", hi, lo, 0.0, 0.0, 1.0, 0.5, 0.5, 3.0, True, fluent=True, truncated=False)]
    check_appropriateness(variants, config, load={"device": "cpu"})
    assert [(v.appropriate, v.appropriateness.split(":")[0]) for v in variants] == [(True, "judge"), (False, "judge")]
    assert [verdict_flags(v.to_record()) for v in variants] == [[], ["inappropriate"]]


def test_the_variants_job_judges_lower_variants_and_writes_the_filtered_pairs(tmp_path, toy_pairs):
    from reform_engine.reward_model import RewardModelSpec, build_reward_model
    from reform_engine.tiny import save_tiny_model

    model = str(save_tiny_model(tmp_path / "m", seed=1, ascii_only=True))
    for name, seed in (("rm", 2), ("judge", 5)):
        build_reward_model(RewardModelSpec(base_model=model, finetune="head", max_length=256), device="cpu",
                           seed=seed).save(tmp_path / name)
    write_jsonl(tmp_path / "d.jsonl", [p.to_trl() for p in toy_pairs])
    cfg = GenerateVariantsConfig(reward_model=str(tmp_path / "rm"), data=str(tmp_path / "d.jsonl"), fraction=1.0, policy=model,
                                 decoding=DecodingConfig(k=4, alpha=0.1, max_new_tokens=6), batch_size=4,
                                 appropriateness=AppropriatenessConfig(source="judge", judge_rm=str(tmp_path / "judge")),
                                 lower_persona="none", raise_persona="none",  # the constructed case: the policy's own prompt
                                 runtime=Runtime(device="cpu"))
    res = generate_variants(cfg, tmp_path / "run")
    records = [json.loads(line) for line in open(res.variants_path)]
    lower = [r for r in records if r["direction"] == "lower"]
    assert all(r["appropriate"] is None and r["appropriateness"] is None for r in records if r["direction"] == "raise")
    assert all(isinstance(r["appropriate"], bool) and r["appropriateness"].startswith("judge: ") for r in lower)
    kept = [r["new_pair"] for r in records if r["is_inversion"] and r["appropriate"] is not False]
    assert [json.loads(line) for line in open(res.appropriate_augment_path)] == kept
    assert res.stats.inappropriate == sum(r["is_inversion"] and r["appropriate"] is False for r in records)
    assert len(list(open(res.augment_path))) == res.stats.inversions
    # the judge (another seed) fails 2 of the 8 lower variants, all 16 variants being inversions under the RM: 14 pairs kept
    assert [r["appropriate"] for r in lower].count(False) == 2 and res.stats.inversions == 16 and len(kept) == 14
