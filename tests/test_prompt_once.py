import pytest
import torch

from conftest import make_pair
from reform_engine.prompt_once import applies, pack, score_groups, units_of
from reform_engine.reward_model import RewardModelSpec, build_reward_model
from reform_engine.scoring import encode, score_encoded_groups, score_sequences


def robustness_like_groups(rm, n=3, members=11):
    """n prompts, each with ``members`` responses of uneven length (a pair, plus 9 perturbed sides)."""
    groups = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"question {i} " * (i + 1)}]
        groups.append([encode(rm.tokenizer, prompt, "word " * (1 + (3 * m + i) % 7) + str(m), max_length=256)
                       for m in range(members)])
    return groups


def whole(rm, groups):
    return torch.tensor([score_sequences(rm, [e.ids for e in g], bucket=False).tolist() for g in groups])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_every_response_of_a_prompt_in_one_row_scores_as_if_run_alone(tiny_rm, attention):
    tiny_rm.backbone.config._attn_implementation = attention
    groups = robustness_like_groups(tiny_rm)
    got = score_groups(tiny_rm, groups, batch_size=8)
    torch.testing.assert_close(torch.tensor(got), whole(tiny_rm, groups), atol=1e-5, rtol=0)


def test_a_packed_row_holds_the_prompt_once_then_each_response_at_the_prompts_next_positions(tiny_rm):
    groups = robustness_like_groups(tiny_rm, n=1, members=3)
    packed = pack(units_of(groups), tiny_rm.tokenizer.pad_token_id)
    prompt = groups[0][0].response_start
    lengths = [len(e.ids) - e.response_start for e in groups[0]]
    assert packed.ids.shape == (1, prompt + sum(lengths))
    starts = [prompt, prompt + lengths[0], prompt + lengths[0] + lengths[1]]
    assert packed.spans == [[(s, s + n) for s, n in zip(starts, lengths)]]
    for k, (s, n) in enumerate(zip(starts, lengths), start=1):
        assert packed.positions[0, s:s + n].tolist() == list(range(prompt, prompt + n))
        assert packed.segments[0, s:s + n].tolist() == [k] * n
        assert packed.ids[0, s:s + n].tolist() == list(groups[0][k - 1].ids[prompt:])
    assert packed.reads.tolist() == [s + n - 1 for s, n in zip(starts, lengths)]


def test_sides_whose_prompts_were_cut_differently_are_separate_units(tiny_rm):
    pair = make_pair(0, "a long question " * 6, "Sure, that is fine.", "No.")
    sides = [encode(tiny_rm.tokenizer, pair.prompt, r, max_length=60) for r in (pair.chosen, pair.rejected)]
    assert sides[0].response_start != sides[1].response_start
    units = units_of([sides])
    assert [u.slots for u in units] == [[0], [1]]
    torch.testing.assert_close(torch.tensor(score_groups(tiny_rm, [sides])), whole(tiny_rm, [sides]), atol=1e-5, rtol=0)


def test_a_decoder_it_does_not_understand_takes_the_copied_cache_path_with_the_same_scores(tmp_path):
    from transformers import GPT2Config, GPT2Model

    from reform_engine.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4)).save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    rm = build_reward_model(RewardModelSpec(base_model=str(tmp_path / "gpt2"), finetune="head"), device="cpu").eval()
    assert not applies(rm)
    groups = robustness_like_groups(rm, n=2, members=4)
    torch.testing.assert_close(torch.tensor(score_encoded_groups(rm, groups)), whole(rm, groups), atol=1e-5, rtol=0)
