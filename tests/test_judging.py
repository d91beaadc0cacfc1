import json

from reform_engine.confirm import ConfirmConfig
from reform_engine.judging import JudgeVariantsConfig, judge_variants, read_samples, verdict
from reform_engine.runtime import Runtime

PROMPT = [{"role": "user", "content": "How do I bake bread?"}]
RULES = ConfirmConfig().build()


def test_a_success_is_preferred_to_y_plus_by_the_target_and_confirmed_by_the_judge_or_a_rule():
    judged = verdict("Knead it.", PROMPT, 10.0, 10.0, r_sample=2.0, r_chosen=1.0, judge=(1.5, 0.5), rules=RULES)
    assert (judged["confirmed_by"], judged["success"]) == (["judge"], True)
    shouted = verdict("KNEAD THE DOUGH AND BAKE IT NOW", PROMPT, 10.0, 10.0, 2.0, 1.0, (None, None), RULES)
    assert (shouted["confirmed_by"], shouted["success"]) == (["capitals"], True)  # no judge: the rule confirms
    assert verdict("KNEAD THE DOUGH AND BAKE IT NOW", PROMPT, 10.0, 10.0, 0.5, 1.0, (None, None), RULES)["success"] is False
    liked = verdict("Knead it.", PROMPT, 10.0, 10.0, 2.0, 1.0, (0.5, 1.5), RULES)  # the judge prefers the sample
    assert (liked["confirmed_by"], liked["success"]) == ([], False)
    assert verdict("  ", PROMPT, 10.0, 10.0, 2.0, 1.0, (1.5, 0.5), RULES)["success"] is False  # nothing to pair


def test_reform_variants_of_one_direction_are_judged_with_the_rules_alone_without_a_judge(tmp_path):
    variants = [{"pair_id": "d:0", "direction": "raise", "prompt": PROMPT, "original_chosen": "Knead, rise, bake.",
                 "text": "yes yes yes yes", "r_variant": 3.0, "r_chosen": 1.0, "perplexity": 5.0},
                {"pair_id": "d:1", "direction": "raise", "prompt": PROMPT, "original_chosen": "Knead, rise, bake.",
                 "text": "Use an oven.", "r_variant": 3.0, "r_chosen": 1.0, "perplexity": 5.0},
                {"pair_id": "d:0", "direction": "lower", "prompt": PROMPT, "original_chosen": "Knead, rise, bake.",
                 "text": "yes yes yes yes", "r_variant": -3.0, "r_chosen": 1.0, "perplexity": 5.0}]
    (tmp_path / "variants.jsonl").write_text("".join(json.dumps(v) + "\n" for v in variants))
    result = judge_variants(JudgeVariantsConfig(str(tmp_path / "variants.jsonl"), base_perplexity=4.0, runtime=Runtime(device="cpu")),
                            tmp_path / "run")
    rows = read_samples(tmp_path / "run")
    assert [(r["pair_id"], r["origin"], r["confirmed_by"], r["success"]) for r in rows] == [
        ("d:0", "reform raise", ["repetition"], True), ("d:1", "reform raise", [], False)]
    assert (result.n, result.confirmed, result.successes, result.success_rate) == (2, 1, 1, 0.5)
    assert read_samples(tmp_path / "run", "fresh") == []
