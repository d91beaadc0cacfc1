import dataclasses
import json

import pytest

from conftest import make_pair
from reform_engine.data import write_jsonl
from reform_engine.decoding import DecodingConfig, DecodingResult
from reform_engine.influence import ScoredPair
from reform_engine.inversions import (GenerateVariantsConfig, Variant, VerdictConfig, check_inversion, generate_variants, is_truncated,
                                      make_variant, normalised, variant_stats, verdict_flags)
from reform_engine.runtime import Runtime
from reform_engine.tiny import save_tiny_model


def test_check_inversion_in_both_directions():
    assert check_inversion("lower", r_variant=-1.0, r_chosen=2.0, r_rejected=0.5) == (True, 1.5)
    assert check_inversion("lower", r_variant=1.0, r_chosen=2.0, r_rejected=0.5) == (False, -0.5)
    assert check_inversion("raise", r_variant=3.0, r_chosen=2.0, r_rejected=0.5) == (True, 1.0)
    assert check_inversion("raise", r_variant=1.0, r_chosen=2.0, r_rejected=0.5) == (False, -1.0)
    with pytest.raises(ValueError, match="use one of"):
        check_inversion("up", 0, 0, 0)


def _variant(direction, r_variant, text="A new answer.", *, perplexity=4.0, plain=float("nan"), ids=(1, 2), stopped="eos",
             verdict=None):
    src = ScoredPair(make_pair(3, "Q?", "Good answer.", "Bad answer."), 2.0, 0.5, 0.2, 1)
    res = DecodingResult(src.pair.prompt, direction, "fast", list(ids), text, final_reward=r_variant, perplexity=perplexity,
                         stopped=stopped)
    return make_variant(src, res, r_variant, plain, verdict)


def test_new_pairs_follow_the_method():
    low = _variant("lower", -1.0)
    assert low.is_inversion and low.margin == 1.5
    assert (low.new_pair().chosen, low.new_pair().rejected) == ("A new answer.", "Bad answer.")
    high = _variant("raise", 3.0)
    assert (high.new_pair().chosen, high.new_pair().rejected) == ("Good answer.", "A new answer.")
    assert _variant("lower", 1.0).new_pair() is None
    assert _variant("lower", -5.0, text="   ").is_inversion is False  # an empty variant is never a pair
    # a pair's second and later variants add pairs of their own ids
    assert [dataclasses.replace(low, index=i).new_pair().pair_id for i in (0, 1, 2)] == [f"{low.pair_id}:lower"] + \
        [f"{low.pair_id}:lower:{i}" for i in (1, 2)]


def test_variant_stats():
    vs = [_variant("lower", -1.0), _variant("lower", 1.0), _variant("raise", 3.0), _variant("raise", 0.0)]
    vs[0].perplexity, vs[2].perplexity = 2.0, 6.0
    st = variant_stats(vs)
    assert (st.n, st.inversions, st.success_rate) == (4, 2, 0.5)
    assert st.mean_perplexity == pytest.approx((2 + 4 + 6 + 4) / 4) and st.mean_perplexity_inversions == pytest.approx(4.0)
    assert st.by_direction == {"lower": {"n": 2, "inversions": 1}, "raise": {"n": 2, "inversions": 1}}


def test_gibberish_far_less_fluent_than_the_plain_policy_is_no_true_inversion():
    # the "H.Pomoderitametakomoronit": perplexity 63.75, past its threshold
    gibberish = _variant("lower", -1.0, "Hagai Kamerman H.Pomoderitametakomoronit", perplexity=63.75, plain=2.5)
    assert (gibberish.margin, gibberish.fluent, gibberish.is_inversion, gibberish.new_pair()) == (1.5, False, False, None)
    assert verdict_flags(gibberish.to_record()) == ["not fluent"]
    fluent = _variant("lower", -1.0, perplexity=6.0, plain=2.5)
    assert (fluent.fluent, fluent.is_inversion, fluent.plain_perplexity) == (True, True, 2.5)
    assert verdict_flags(fluent.to_record()) == []
    # the limit is the setting: 63.75 / 2.5 = 25.5 passes a 30x limit; 0 turns the flag off (fluency unknown)
    assert _variant("lower", -1.0, perplexity=63.75, plain=2.5, verdict=VerdictConfig(max_perplexity_ratio=30.0)).is_inversion
    off = _variant("lower", -1.0, perplexity=63.75, plain=2.5, verdict=VerdictConfig(max_perplexity_ratio=0.0))
    assert (off.fluent, off.is_inversion) == (None, True)
    unknown = _variant("lower", -1.0, perplexity=63.75)  # no plain-policy reference: unknown, and said so
    assert (unknown.fluent, unknown.is_inversion) == (None, True) and verdict_flags(unknown.to_record()) == ["fluency unknown"]


def test_the_fluency_limit_refuses_a_ratio_that_would_flag_the_plain_policy_itself():
    assert VerdictConfig().max_perplexity_ratio == 20.0
    with pytest.raises(ValueError, match="use a ratio >= 1, or 0 to turn the flag off"):
        VerdictConfig(max_perplexity_ratio=0.5)
    with pytest.raises(ValueError, match="finite ratio >= 1"):
        VerdictConfig(max_perplexity_ratio=-1.0)
    with pytest.raises(ValueError, match="finite ratio >= 1"):
        GenerateVariantsConfig(reward_model="x", verdict=VerdictConfig(max_perplexity_ratio=float("inf")))


def test_a_variant_cut_mid_sentence_at_the_token_limit_is_flagged_truncated():
    assert is_truncated("I think that the", "max_new_tokens") is True
    assert is_truncated("I think so.  ", "max_new_tokens") is False
    assert is_truncated('He said "no!"', "max_new_tokens") is False
    assert is_truncated("(See above?)", "max_new_tokens") is False
    assert is_truncated("I think that the", "eos") is False  # the policy ended it itself
    cut = _variant("lower", -1.0, "Well, the answer is", stopped="max_new_tokens", plain=4.0)
    assert (cut.truncated, cut.is_inversion) == (True, True)  # flagged, still an inversion
    assert verdict_flags(cut.to_record()) == ["truncated"]
    assert _variant("lower", -1.0, "Well, the answer is", stopped="eos").truncated is False


def test_a_one_token_variant_is_no_true_inversion():
    one = _variant("lower", -1.0, "No", ids=(7,), plain=4.0)
    assert (one.margin, one.n_tokens, one.is_inversion) == (1.5, 1, False)


def test_variant_stats_count_the_variants_kept_out_as_not_fluent():
    vs = [_variant("lower", -1.0, perplexity=63.75, plain=2.5), _variant("lower", 1.0, perplexity=63.75, plain=2.5),
          _variant("raise", 3.0, "Cut off at", stopped="max_new_tokens", plain=2.5)]
    st = variant_stats(vs)
    assert (st.n, st.inversions, st.not_fluent, st.truncated) == (3, 1, 1, 1)


def test_bad_job_config_is_refused_early():
    with pytest.raises(ValueError, match="'lower', 'raise' or 'both'"):
        GenerateVariantsConfig(reward_model="x", directions="sideways")
    with pytest.raises(ValueError, match="k >= 1"):
        GenerateVariantsConfig(reward_model="x", decoding=DecodingConfig(k=0))


def test_generate_variants_job_end_to_end(tmp_path, toy_pairs):
    from reform_engine.reward_model import RewardModelSpec, build_reward_model

    model = str(save_tiny_model(tmp_path / "m", seed=1, ascii_only=True))
    build_reward_model(RewardModelSpec(base_model=model, finetune="head", max_length=256), device="cpu", seed=2).save(tmp_path / "rm")
    write_jsonl(tmp_path / "d.jsonl", [p.to_trl() for p in toy_pairs])
    cfg = GenerateVariantsConfig(reward_model=str(tmp_path / "rm"), data=str(tmp_path / "d.jsonl"), fraction=0.25, policy=model,
                                 decoding=DecodingConfig(k=4, alpha=0.1, max_new_tokens=6), batch_size=2,
                                 runtime=Runtime(device="cpu"))
    res = generate_variants(cfg, tmp_path / "run")
    assert res.n_influential == 2 and res.stats.n == 4
    records = [json.loads(line) for line in open(res.variants_path)]
    assert sorted(r["direction"] for r in records) == ["lower", "lower", "raise", "raise"]
    for r in records:
        assert r["r_variant"] == pytest.approx(r["r_trace"], abs=1e-4)  # ASCII text re-tokenizes to the decoded ids
        assert r["plain_perplexity"] > 1.0 and r["fluent"] == (r["perplexity"] <= 20.0 * r["plain_perplexity"])
        assert r["is_inversion"] == (r["margin"] > 0 and r["fluent"] and r["n_tokens"] >= 2)
        assert r["truncated"] == (len(r["steps"]) == 6 and not r["steps"][-1]["is_eos"] and not r["text"].rstrip().endswith(
            tuple(".!?…。！？")))
        assert 1 <= len(r["steps"]) <= 6 and len(r["steps"][0]["candidate_ids"]) == 4
        assert (r["new_pair"] is not None) == r["is_inversion"]
    augment = [json.loads(line) for line in open(res.augment_path)]
    assert len(augment) == res.stats.inversions
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "succeeded"
    # the same job reading an 'influential' run's ranking decodes the same variants
    from reform_engine.influence import InfluenceConfig, find_influential
    inf = find_influential(InfluenceConfig(reward_model=str(tmp_path / "rm"), data=str(tmp_path / "d.jsonl"),
                                           runtime=Runtime(device="cpu")),
                           tmp_path / "inf")
    again = generate_variants(dataclasses.replace(cfg, scored=inf.scored_path), tmp_path / "run2")
    assert [json.loads(line)["text"] for line in open(again.variants_path)] == [r["text"] for r in records]
    # a limit of 1x flags every variant less likely than the plain policy's own text: none of those is queued as a pair
    strict = generate_variants(dataclasses.replace(cfg, scored=inf.scored_path, verdict=VerdictConfig(max_perplexity_ratio=1.0)),
                               tmp_path / "run3")
    rows = [json.loads(line) for line in open(strict.variants_path)]
    assert [r["fluent"] for r in rows] == [r["perplexity"] <= r["plain_perplexity"] for r in rows]
    assert strict.stats.not_fluent == sum(r["margin"] > 0 and not r["fluent"] for r in rows) > 0
    assert strict.stats.inversions == sum(r["is_inversion"] for r in rows) == len(list(open(strict.augment_path)))


def test_a_scored_file_from_other_data_is_refused(tmp_path, toy_pairs):
    from reform_engine.data import DataError
    from reform_engine.influence import load_scored
    write_jsonl(tmp_path / "s.jsonl", [{"pair_id": "t:0", "r_chosen": 1.0, "r_rejected": 0.0, "loss": 0.3, "rank": 1}])
    assert load_scored(toy_pairs[:1], tmp_path / "s.jsonl")[0].rank == 1
    with pytest.raises(DataError, match="not in the scored file"):
        load_scored(toy_pairs[:2], tmp_path / "s.jsonl")


def test_score_variant_rescores_the_text_and_judges_it(tmp_path):
    from reform_engine.decoding import ControlledDecoder, DecodingConfig
    from reform_engine.inversions import score_variant
    from reform_engine.models import load_causal_lm, load_tokenizer
    from reform_engine.reward_model import RewardModelSpec, build_reward_model
    from reform_engine.scoring import score_pairs

    tiny_model_dir = str(save_tiny_model(tmp_path / "m", ascii_only=True))  # every token is whole text: re-encoding is exact
    tiny_rm = build_reward_model(RewardModelSpec(base_model=tiny_model_dir, finetune="full"), device="cpu", seed=0).eval()
    pair = make_pair(0, "Can you help me?", "Sure, happy to help.", "No. Go away!!")
    scores = score_pairs(tiny_rm, [pair])
    source = ScoredPair(pair, float(scores.r_chosen[0]), float(scores.r_rejected[0]), float(scores.losses[0]), 1)
    decoder = ControlledDecoder(load_causal_lm(tiny_model_dir, device="cpu"), load_tokenizer(tiny_model_dir), tiny_rm)
    result = decoder.decode([pair.prompt], DecodingConfig(k=3, max_new_tokens=6, stop_on_eos=False))[0]
    variant = score_variant(tiny_rm, source, result)
    assert variant.text == result.text and variant.steps == result.steps
    assert variant.r_variant == pytest.approx(result.final_reward, abs=1e-4)  # same ids, same reward
    assert variant.is_inversion == (variant.r_variant < source.r_rejected)
    empty = score_variant(tiny_rm, source, dataclasses.replace(result, text="  "))
    assert empty.is_inversion is False and empty.r_variant != empty.r_variant  # NaN


@pytest.fixture()
def variants_setup(tmp_path, toy_pairs):
    from reform_engine.reward_model import RewardModelSpec, build_reward_model

    model = str(save_tiny_model(tmp_path / "m", seed=1, ascii_only=True))
    build_reward_model(RewardModelSpec(base_model=model, finetune="head", max_length=256), device="cpu", seed=2).save(tmp_path / "rm")
    write_jsonl(tmp_path / "d.jsonl", [p.to_trl() for p in toy_pairs])
    cfg = GenerateVariantsConfig(reward_model=str(tmp_path / "rm"), data=str(tmp_path / "d.jsonl"), fraction=0.125, policy=model,
                                 directions="lower", decoding=DecodingConfig(k=2, max_new_tokens=2), max_length=256,
                                 runtime=Runtime(device="cpu"))
    return cfg


def handed_over(tmp_path, cfg, key):
    """A ranking the job could never compute itself: the last pair (d.jsonl:7) first, with r+ = 5.0."""
    from reform_engine.influence import write_scored

    pairs = cfg.read_pairs()[1]
    scored = [ScoredPair(p, 5.0 if i == 7 else 0.0, 0.0, 0.1 if i == 7 else 0.7, 1 if i == 7 else i + 2)
              for i, p in enumerate(pairs)]
    return str(write_scored(tmp_path / "handed", scored, [], key))


def recorded_statuses(monkeypatch) -> list:
    from reform_engine.runs import RunDir

    seen, original = [], RunDir.set_status

    def record(self, state=None, **fields):
        seen.append((fields.get("message"), fields.get("step"), fields.get("total")))
        return original(self, state, **fields)
    monkeypatch.setattr(RunDir, "set_status", record)
    return seen


def test_the_variants_job_reuses_scores_handed_over_under_its_own_key(tmp_path, toy_pairs, variants_setup, monkeypatch):
    from reform_engine.score_cache import score_key

    cfg = variants_setup
    key = score_key(cfg.reward_model, cfg.data, cfg.rows, cfg.skip_invalid, cfg.max_length)
    seen = recorded_statuses(monkeypatch)
    res = generate_variants(dataclasses.replace(cfg, scored=handed_over(tmp_path, cfg, key)), tmp_path / "run")
    records = [json.loads(line) for line in open(res.variants_path)]
    assert [(r["pair_id"], r["r_chosen"]) for r in records] == [("d.jsonl:7", 5.0)]
    assert not any(m and m.startswith("scoring") for m, _, _ in seen)
    assert "reusing the scores of" in (tmp_path / "run" / "log.txt").read_text()


def test_the_variants_job_scores_again_with_progress_when_the_handed_scores_are_from_another_setting(
        tmp_path, toy_pairs, variants_setup, monkeypatch):
    from reform_engine.score_cache import ScoreKey, score_key

    cfg = variants_setup
    key = score_key(cfg.reward_model, cfg.data, cfg.rows, cfg.skip_invalid, cfg.max_length)
    other = ScoreKey(key.rm, key.data, key.rows, 128)  # scored at another max_length
    seen = recorded_statuses(monkeypatch)
    res = generate_variants(dataclasses.replace(cfg, scored=handed_over(tmp_path, cfg, other)), tmp_path / "run")
    records = [json.loads(line) for line in open(res.variants_path)]
    assert records[0]["r_chosen"] != 5.0
    scoring = [(m, step, total) for m, step, total in seen if m and m.startswith("scoring 8 pairs first")]
    assert scoring[0] == ("scoring 8 pairs first: 0/16 responses", 0, 16)
    assert scoring[-1] == ("scoring 8 pairs first: 16/16 responses", 16, 16)
    assert "scored under another reward model, data, rows or max_length: scoring again" in \
        (tmp_path / "run" / "log.txt").read_text()


def test_several_variants_per_pair_follow_the_schedule_and_carry_their_direction_s_persona(tmp_path, variants_setup):
    cfg = dataclasses.replace(variants_setup, directions="both", variants_per_pair=3, temperature_step=1.0, k_step=1,
                              decoding=DecodingConfig(k=2, max_new_tokens=6, stop_on_eos=False))
    res = generate_variants(cfg, tmp_path / "run")
    records = [json.loads(line) for line in open(res.variants_path)]
    schedule = [(0, 2, 0.0, 0), (1, 3, 1.0, 1), (2, 4, 2.0, 2)]  # (index, k, temperature, seed): k + i, T + i * 1.0, seed + i
    assert res.n_influential == 1 and res.stats.n == len(records) == 6 and res.stats.duplicates == 0
    for d, persona in (("lower", "aligned"), ("raise", "compliant")):
        mine = [r for r in records if r["direction"] == d]
        assert [(r["index"], r["k"], r["temperature"], r["seed"]) for r in mine] == schedule
        assert [len(r["steps"][0]["candidate_ids"]) for r in mine] == [2, 3, 4]
        assert {r["persona"] for r in mine} == {persona}
        assert len({normalised(r["text"]) for r in mine}) == 3
    assert "kept 6 variants; dropped 0 near-duplicates" in (tmp_path / "run" / "log.txt").read_text()


def test_near_duplicate_variants_are_dropped_and_counted(tmp_path, variants_setup):
    # temperature 0 three times: the same greedy text three times, whatever the seed
    cfg = dataclasses.replace(variants_setup, variants_per_pair=3, temperature_step=0.0)
    res = generate_variants(cfg, tmp_path / "run")
    records = [json.loads(line) for line in open(res.variants_path)]
    assert [r["index"] for r in records] == [0] and res.stats.n == 1 and res.stats.duplicates == 2
    assert "kept 1 variants; dropped 2 near-duplicates" in (tmp_path / "run" / "log.txt").read_text()
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["message"].endswith(", 2 near-duplicates dropped")
    assert normalised("  Sure,\n\tHAPPY  to help. ") == normalised("sure, happy to help.") != normalised("sure happy to help")


def test_the_variants_schedule_refuses_bad_steps_with_what_to_do():
    with pytest.raises(ValueError, match="at least 1 variant per pair"):
        GenerateVariantsConfig(reward_model="x", variants_per_pair=0)
    with pytest.raises(ValueError, match="temperature_step=-0.5: use a finite step >= 0"):
        GenerateVariantsConfig(reward_model="x", temperature_step=-0.5)
    with pytest.raises(ValueError, match="k_step=-1: use a whole number >= 0"):
        GenerateVariantsConfig(reward_model="x", k_step=-1)
    cfg = GenerateVariantsConfig(reward_model="x", decoding=DecodingConfig(k=5, temperature=0.2), k_step=5)
    assert [(cfg.decoding_for("lower", i).k, cfg.decoding_for("lower", i).temperature, cfg.seed_for(i)) for i in range(3)] == \
        [(5, 0.2, 0), (10, 0.7, 1), (15, 1.2, 2)]


def test_a_variants_run_killed_mid_way_resumes_from_its_last_finished_batch_with_the_same_result(tmp_path, variants_setup,
                                                                                                monkeypatch):
    import reform_engine.inversions as inversions

    cfg = dataclasses.replace(variants_setup, fraction=0.5, batch_size=1, directions="both", variants_per_pair=2,
                              temperature_step=1.0, decoding=DecodingConfig(k=2, max_new_tokens=4, stop_on_eos=False))
    whole = generate_variants(cfg, tmp_path / "whole")
    original, calls = inversions._decode_batch, []

    def killed_after_three(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt("the session ended")
        calls.append(1)
        return original(*args, **kwargs)
    monkeypatch.setattr(inversions, "_decode_batch", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        generate_variants(cfg, tmp_path / "run")
    assert len(calls) == 3 and (tmp_path / "run" / inversions.JOURNAL).is_file()
    calls.clear()
    monkeypatch.setattr(inversions, "_decode_batch", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    res = generate_variants(cfg, tmp_path / "run")
    assert len(calls) == 8 - 3  # 4 pairs x 2 directions, one pair per batch: only the unfinished batches decode
    assert (tmp_path / "run" / "variants.jsonl").read_text() == (tmp_path / "whole" / "variants.jsonl").read_text()
    assert (tmp_path / "run" / "augment.jsonl").read_text() == (tmp_path / "whole" / "augment.jsonl").read_text()
    assert res.stats == whole.stats
    assert "resuming: 3 finished batches" in (tmp_path / "run" / "log.txt").read_text()
    assert not (tmp_path / "run" / inversions.JOURNAL).exists()  # served: removed once the results are written


def test_a_variant_read_back_from_its_record_is_the_variant(tmp_path, variants_setup):
    res = generate_variants(variants_setup, tmp_path / "run")
    records = [json.loads(line) for line in open(res.variants_path)]
    assert records and all(json.dumps(Variant.from_record(r).to_record()) == json.dumps(r) for r in records)


def test_a_variant_of_a_pair_the_rm_already_orders_wrong_is_flagged_so():
    right = _variant("raise", 3.0, perplexity=6.0, plain=2.5)
    assert right.r_chosen > right.r_rejected and "ordered wrong" not in verdict_flags(right.to_record())
    for direction, r_variant in (("raise", 3.0), ("lower", -1.0)):
        record = {**_variant(direction, r_variant, perplexity=6.0, plain=2.5).to_record(), "r_chosen": 0.5, "r_rejected": 0.5}
        assert verdict_flags(record) == ["ordered wrong"]  # a tie is no right ordering either
    assert verdict_flags({**right.to_record(), "direction": "adv-rm", "r_rejected": 9.0}) == []  # an Adv-RM sample: no source pair
    assert verdict_flags({**right.to_record(), "r_rejected": float("nan")}) == []


def test_variant_stats_count_the_inversions_from_source_pairs_ordered_wrong():
    vs = [_variant("raise", 3.0), _variant("lower", -1.0), _variant("raise", 3.0)]
    vs[2].r_chosen, vs[2].r_rejected = 0.4, 0.9  # the RM already preferred the rejected response of this one's pair
    assert (variant_stats(vs).inversions, variant_stats(vs).ordered_wrong) == (3, 1)
