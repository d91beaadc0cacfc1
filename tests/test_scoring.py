import pytest
import torch

from conftest import make_pair
from reform_engine.data import DataError
from reform_engine.scoring import (PairScores, bradley_terry_loss, encode, length_buckets, reward_trace, score_encoded_groups,
                                   score_pairs, score_sequences, token_pieces)
from reform_engine.tiny import build_tiny_tokenizer

TOK = build_tiny_tokenizer()
LONG_CHAT = [{"role": "user", "content": "first question " * 10}, {"role": "assistant", "content": "first answer " * 10},
             {"role": "user", "content": "the last question?"}]


def test_encode_keeps_response_whole_and_prompt_first():
    enc = encode(TOK, [{"role": "user", "content": "Hi"}], "Hello!", max_length=200)
    assert TOK.decode(enc.ids[enc.response_start:]) == "Hello!"
    assert TOK.decode(enc.ids[: enc.response_start]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert not enc.prompt_truncated


def test_long_prompt_drops_oldest_turns_first():
    enc = encode(TOK, LONG_CHAT, "Answer.", max_length=80)
    prompt = TOK.decode(enc.ids[: enc.response_start])
    assert enc.prompt_truncated and len(enc.ids) <= 80
    assert prompt == "<|im_start|>user\nthe last question?<|im_end|>\n<|im_start|>assistant\n"
    assert TOK.decode(enc.ids[enc.response_start:]) == "Answer."


def test_single_long_turn_is_cut_from_the_left():
    enc = encode(TOK, [{"role": "user", "content": "abcdefghij" * 10 + " END?"}], "Ok.", max_length=60)
    prompt = TOK.decode(enc.ids[: enc.response_start])
    assert enc.prompt_truncated and len(enc.ids) <= 60 and prompt.endswith("END?<|im_end|>\n<|im_start|>assistant\n")
    assert TOK.decode(enc.ids[enc.response_start:]) == "Ok."


def test_response_that_cannot_fit_is_refused_with_fix():
    with pytest.raises(DataError, match="raise max_length"):
        encode(TOK, [{"role": "user", "content": "Q"}], "x" * 100, max_length=50)
    with pytest.raises(DataError, match="response is empty"):
        encode(TOK, [{"role": "user", "content": "Q"}], "", max_length=50)


def test_length_buckets_sort_and_cap_tokens():
    assert length_buckets([5, 1, 4, 2, 3], batch_size=2) == [[1, 3], [4, 2], [0]]
    assert length_buckets([10, 10, 10, 1], batch_size=8, max_tokens=20) == [[3, 0], [1, 2]]


def test_bucketed_scoring_matches_one_at_a_time(tiny_rm, toy_pairs):
    scores = score_pairs(tiny_rm, toy_pairs, batch_size=5)
    single = [score_pairs(tiny_rm, [p], batch_size=2) for p in toy_pairs]
    torch.testing.assert_close(scores.r_chosen, torch.cat([s.r_chosen for s in single]), atol=1e-5, rtol=0)
    torch.testing.assert_close(scores.r_rejected, torch.cat([s.r_rejected for s in single]), atol=1e-5, rtol=0)
    unbucketed = score_pairs(tiny_rm, toy_pairs, batch_size=5, bucket=False)
    torch.testing.assert_close(unbucketed.r_chosen, scores.r_chosen, atol=1e-5, rtol=0)


def test_pair_losses_are_bradley_terry():
    s = PairScores(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), 0)
    torch.testing.assert_close(s.losses, torch.tensor([0.3132617, 0.6931472]))
    torch.testing.assert_close(s.margins, torch.tensor([1.0, 0.0]))


def test_bradley_terry_loss_per_pair_and_its_mean_come_from_one_rule():
    import reform_engine.training as training

    r_chosen, r_rejected = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 2.0])
    torch.testing.assert_close(bradley_terry_loss(r_chosen, r_rejected, reduction="none"), torch.tensor([0.3132617, 0.6931472]))
    torch.testing.assert_close(bradley_terry_loss(r_chosen, r_rejected), torch.tensor((0.3132617 + 0.6931472) / 2))
    assert training.bradley_terry_loss is bradley_terry_loss  # the loss trained on is the loss pairs are ranked by
    with pytest.raises(ValueError, match="use 'mean'"):
        bradley_terry_loss(r_chosen, r_rejected, reduction="sum")


def test_trace_last_value_equals_full_sequence_score(tiny_rm):
    prompt = [{"role": "user", "content": "How are you?"}]
    trace = reward_trace(tiny_rm, prompt, "I am fine, thanks — and you?")
    full = score_pairs(tiny_rm, [make_pair(0, "How are you?", "I am fine, thanks — and you?", "x")]).r_chosen[0]
    assert trace.final == pytest.approx(full.item(), abs=1e-5)
    assert "".join(trace.pieces) == "I am fine, thanks — and you?"
    assert len(trace.rewards) == len(trace.token_ids) and not trace.slow_path


def test_trace_prefix_values_equal_scores_of_cut_responses(tiny_rm):
    prompt = [{"role": "user", "content": "Hi"}]
    trace = reward_trace(tiny_rm, prompt, "abc")
    for i, cut in enumerate(["a", "ab", "abc"]):
        enc = encode(tiny_rm.tokenizer, prompt, cut, max_length=256)
        assert trace.rewards[i] == pytest.approx(score_sequences(tiny_rm, [enc.ids])[0].item(), abs=1e-5)


def test_token_pieces_hold_multibyte_characters_together():
    ids = TOK("é!", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3 and token_pieces(TOK, ids) == ["", "é", "!"]


def test_shared_prompt_scoring_matches_full_sequences(tiny_rm, toy_pairs):
    pairs = toy_pairs + [make_pair(99, "A much longer question " * 4, "ok", "not ok at all, no")]
    shared = score_pairs(tiny_rm, pairs, batch_size=4, share_prompt=True)
    full = score_pairs(tiny_rm, pairs, batch_size=4, share_prompt=False)
    torch.testing.assert_close(shared.r_chosen, full.r_chosen, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.r_rejected, full.r_rejected, atol=1e-5, rtol=0)


def test_sides_with_differently_cut_prompts_are_scored_alone(tiny_rm):
    long_chat = LONG_CHAT
    pair = type(make_pair(0, "q", "a", "b"))("t:0", tuple(long_chat), "Yes.", "No, " + "really " * 8 + "no.")
    shared = score_pairs(tiny_rm, [pair], max_length=90, share_prompt=True)
    full = score_pairs(tiny_rm, [pair], max_length=90, share_prompt=False)
    assert shared.truncated >= 1
    torch.testing.assert_close(shared.r_chosen, full.r_chosen, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.r_rejected, full.r_rejected, atol=1e-5, rtol=0)


def test_pair_that_cannot_fit_names_the_pair_and_the_fix(tiny_rm):
    with pytest.raises(DataError) as info:
        score_pairs(tiny_rm, [make_pair(7, "Q", "y" * 300, "n")], max_length=100)
    assert str(info.value).startswith("pair t:7: the response alone is 300 tokens") and str(info.value).count("Fix:") == 1


def test_groups_of_uneven_size_share_each_prompt_and_match_whole_sequences(tiny_rm):
    prompts = [[{"role": "user", "content": "Where is Paris?"}], [{"role": "user", "content": "A longer question, " * 3}]]
    answers = [["In France.", "IN FRANCE.", "In France. In France.", "no"], ["Sure."]]  # 4 share one prompt, 1 alone
    groups = [[encode(tiny_rm.tokenizer, p, a, max_length=256) for a in ans] for p, ans in zip(prompts, answers)]
    got = score_encoded_groups(tiny_rm, groups, batch_size=4)
    want = [score_sequences(tiny_rm, [e.ids for e in g]).tolist() for g in groups]
    assert [len(g) for g in got] == [4, 1]
    torch.testing.assert_close(torch.tensor(sum(got, [])), torch.tensor(sum(want, [])), atol=1e-5, rtol=0)


def test_progress_counts_every_scored_side_once(tiny_rm, toy_pairs):
    for share in (True, False):
        calls = []
        score_pairs(tiny_rm, toy_pairs, batch_size=4, share_prompt=share, on_progress=lambda d, t: calls.append((d, t)))
        assert calls[-1] == (16, 16) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_an_over_long_pair_is_skipped_and_counted_while_the_others_are_scored(tiny_rm, toy_pairs):
    pairs = toy_pairs[:3] + [make_pair(99, "Q", "y" * 300, "n")] + toy_pairs[3:]
    for share in (True, False):
        scores = score_pairs(tiny_rm, pairs, max_length=100, share_prompt=share, skip_too_long=True)
        alone = score_pairs(tiny_rm, toy_pairs, max_length=100, share_prompt=share)
        assert scores.skipped == (3,) and [p.pair_id for p in scores.scored(pairs)] == [p.pair_id for p in toy_pairs]
        torch.testing.assert_close(scores.r_chosen, alone.r_chosen, atol=1e-5, rtol=0)
        torch.testing.assert_close(scores.r_rejected, alone.r_rejected, atol=1e-5, rtol=0)
    with pytest.raises(DataError, match="pair t:99"):  # without skip_too_long it stays an error naming the pair
        score_pairs(tiny_rm, pairs, max_length=100)
