import contextlib

import pytest
import torch

from adversary_support import save_short_answer_policy
from reform_engine.reward_model import RewardModelSpec, build_reward_model, load_reward_model
from reform_engine.rollouts import OWN_EMBEDDING, RolloutEngine, build_policy
from reform_engine.scoring import encode, score_sequences
from reform_engine.tiny import save_tiny_model

PROMPTS = [({"role": "user", "content": "Hello there, how are you?"},), ({"role": "user", "content": "Hi"},)]


def randomise_lora(model, std: float = 0.5) -> None:
    """LoRA's B starts at zero (the adapter then changes nothing); give it weight so the tests can tell."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("rollouts") / "policy", seed=1, ascii_only=True))


@pytest.fixture()
def policy(tiny_dir):
    torch.manual_seed(0)
    model, tok = build_policy(tiny_dir, lora_layers=1, lora_r=2, lora_alpha=4, device="cpu")
    randomise_lora(model)
    return model, tok


def rm_on(tiny_dir, tmp_path, name: str, **spec):
    """A saved and reloaded RM on the tiny base (LoRA merged as for inference)."""
    rm = build_reward_model(RewardModelSpec(base_model=tiny_dir, max_length=256, **spec), device="cpu", seed=len(name))
    randomise_lora(rm, 0.3)
    return load_reward_model(str(rm.save(tmp_path / name)), device="cpu")


def test_rewards_read_from_the_shared_trunk_equal_each_rms_own_score_of_the_same_tokens(policy, tiny_dir, tmp_path):
    lora = rm_on(tiny_dir, tmp_path, "lora", finetune="lora", lora_layers=1, lora_r=2)
    head = rm_on(tiny_dir, tmp_path, "head", finetune="head")
    own = rm_on(tiny_dir, tmp_path, "full", finetune="full")
    with torch.no_grad():
        own.backbone.embed_tokens.weight.mul_(1.5)  # its embeddings differ: it must run all its layers itself
    hh = rm_on(tiny_dir, tmp_path, "hh", finetune="head", use_chat_template=False)  # another prompt format: text
    engine = RolloutEngine(*policy, [lora, head, own, hh], prompt_budget=100)
    assert (engine.lora_start, engine.rm_depths, engine.depths) == (1, [1, 1, OWN_EMBEDDING, 1], [1])
    roll = engine.sample(PROMPTS, 3, torch.Generator().manual_seed(0), max_new_tokens=6)
    assert [engine.shares_trunk(m, roll.prompts) for m in range(4)] == [True, True, True, False]
    rewards = engine.rm_rewards(roll)
    owner = roll.owner.tolist()
    for m, rm in enumerate([lora, head, own]):
        seqs = [engine.prompt_ids(PROMPTS[owner[n]]) + roll.content_ids(n) for n in range(6)]
        assert torch.allclose(rewards[:, m], score_sequences(rm, seqs, bucket=False), atol=1e-4), m
    texts = [encode(hh.tokenizer, PROMPTS[owner[n]], roll.texts[n], max_length=256, use_chat_template=False).ids for n in range(6)]
    assert torch.allclose(rewards[:, 3], score_sequences(hh, texts, bucket=False), atol=1e-5)


def full_forward_logp(model, engine, roll, adapter: bool) -> torch.Tensor:
    """(N,) sum of log pi over each rollout's tokens from one ordinary forward of prompt + response."""
    out = []
    for n in range(roll.tokens.shape[0]):
        prompt = engine.prompt_ids(roll.prompts[int(roll.owner[n])])
        response = roll.tokens[n, : int(roll.lengths[n])].tolist()
        with torch.no_grad(), (contextlib.nullcontext() if adapter else model.disable_adapter()):
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0].float()
        logits[len(prompt) - 1: len(prompt) - 1 + roll.min_new_tokens, engine.eos_ids] = float("-inf")
        logp = torch.log_softmax(logits, -1)
        out.append(sum(logp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(response)))
    return torch.tensor(out)


def test_log_probs_equal_a_full_forward_of_the_policy_with_and_without_its_adapter(policy):
    model, tok = policy
    engine = RolloutEngine(model, tok, [], prompt_budget=100)
    roll = engine.sample(PROMPTS, 2, torch.Generator().manual_seed(1), max_new_tokens=5, min_new_tokens=2)
    logp, entropy = engine.logprobs(roll, grad=True)
    logp0, _ = engine.logprobs(roll, adapter=False)
    assert logp.requires_grad and not logp0.requires_grad
    assert torch.allclose(logp.sum(-1).detach(), full_forward_logp(model, engine, roll, True), atol=1e-4)
    assert torch.allclose(logp0.sum(-1), full_forward_logp(model, engine, roll, False), atol=1e-4)
    assert (logp.sum(-1).detach() - logp0.sum(-1)).abs().max() > 0.1  # the adapter matters
    assert (entropy > 0).all()
    logp.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_a_fresh_policy_is_pi0(tiny_dir):
    model, tok = build_policy(tiny_dir, lora_layers=1, lora_r=2, lora_alpha=4, device="cpu")
    engine = RolloutEngine(model, tok, [], prompt_budget=100)
    roll = engine.sample(PROMPTS, 2, torch.Generator().manual_seed(2), max_new_tokens=4)
    assert torch.equal(engine.logprobs(roll)[0], engine.logprobs(roll, adapter=False)[0])


def test_sampling_is_seeded_stops_at_eos_and_masks_eos_before_min_new_tokens(tmp_path):
    model, tok = build_policy(save_short_answer_policy(tmp_path / "short"), lora_layers=1, lora_r=2, lora_alpha=4, device="cpu")
    engine = RolloutEngine(model, tok, [], prompt_budget=100)
    prompts = [({"role": "user", "content": "What is 2+2?"},), ({"role": "user", "content": "Name a colour."},)]
    a = engine.sample(prompts, 4, torch.Generator().manual_seed(0), max_new_tokens=12)
    b = engine.sample(prompts, 4, torch.Generator().manual_seed(0), max_new_tokens=12)
    assert torch.equal(a.tokens, b.tokens) and a.texts == b.texts
    assert a.ended.all() and a.owner.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    for n in range(8):  # the text is everything before EOS; after EOS only padding
        assert a.tokens[n, int(a.lengths[n]) - 1].item() == tok.eos_token_id
        assert tok.decode(a.content_ids(n)) == a.texts[n] and tok.eos_token not in a.texts[n]
    assert int(a.lengths.min()) < 6
    late = engine.sample(prompts, 4, torch.Generator().manual_seed(0), max_new_tokens=12, min_new_tokens=6)
    assert int(late.lengths.min()) >= 7  # EOS could come no earlier than the 7th token


def test_sentence_end_tokens_are_found_in_the_vocabulary_and_digits_are_told_apart(tiny_dir):
    from transformers import AutoTokenizer

    from reform_engine.rollouts import sentence_end_ids

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ends, digits = sentence_end_ids(tok)
    assert sorted(tok.decode([i]) for i in ends) == ["!", ".", "?"]  # one character per token in the tiny vocabulary
    assert sorted(tok.decode([i]) for i in digits) == list("0123456789")


@pytest.fixture(scope="module")
def short_answers(tmp_path_factory) -> str:
    return save_short_answer_policy(tmp_path_factory.mktemp("short") / "policy")


def test_a_sentence_end_in_the_final_window_ends_a_response_one_token_before_its_eos(short_answers):
    model, tok = build_policy(short_answers, lora_layers=1, lora_r=2, lora_alpha=4, device="cpu")
    engine = RolloutEngine(model, tok, [], prompt_budget=100)
    prompts = [({"role": "user", "content": "Can you help me?"},), ({"role": "user", "content": "Name a colour."},)]
    eos_only = engine.sample(prompts, 4, torch.Generator().manual_seed(3), max_new_tokens=12)
    window = engine.sample(prompts, 4, torch.Generator().manual_seed(3), max_new_tokens=12, sentence_window=12)
    assert eos_only.ended.all() and not eos_only.stopped.any()  # the policy answers "Sure." etc. and then EOS
    assert window.texts == eos_only.texts  # every answer ends in . or !: cut there, the same text
    assert window.stopped.all() and not window.ended.any() and window.complete.all()
    assert (window.lengths == eos_only.lengths - 1).all()  # the EOS token is never sampled
    width = window.tokens.shape[1]  # the sampling stops a step earlier too
    assert torch.equal(window.tokens[window.mask], eos_only.tokens[:, :width][window.mask])
    late = engine.sample(prompts, 4, torch.Generator().manual_seed(3), max_new_tokens=12, sentence_window=2)
    assert late.texts == eos_only.texts and late.ended.all() and not late.stopped.any()  # the answers end before the window


def test_a_fitting_engine_keeps_room_for_the_response_within_the_shortest_limit_and_refuses_when_none_is_left(policy, tiny_dir,
                                                                                                            tmp_path):
    from reform_engine.data import DataError

    short = rm_on(tiny_dir, tmp_path, "short", finetune="head")
    short.spec.max_length = 40  # the shortest limit of the three: the policy's context, max_prompt_tokens, this RM
    engine = RolloutEngine.fitting(*policy, [short], max_prompt_tokens=100, max_new_tokens=16)
    assert engine.prompt_budget == 40 - 16
    assert RolloutEngine.fitting(*policy, [short], max_prompt_tokens=30, max_new_tokens=16).prompt_budget == 30 - 16
    with pytest.raises(DataError, match="max_new_tokens=38 leaves no room"):
        RolloutEngine.fitting(*policy, [short], max_prompt_tokens=100, max_new_tokens=38)
