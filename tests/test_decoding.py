import pytest
import torch

from reference_decoding import ReferenceDecoder
from reform_engine.data import DataError
from reform_engine.decoding import CandidateScorer, ControlledDecoder, DecodingConfig, RewardGuidedScore, _candidate_mask
from reform_engine.models import load_causal_lm, load_tokenizer
from reform_engine.reward_model import RewardModelSpec, build_reward_model, load_reward_model
from reform_engine.scoring import encode, encode_prompt, score_sequences
from reform_engine.tiny import save_tiny_model

PROMPTS = [[{"role": "user", "content": "Hello there"}],
           [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes?"},
            {"role": "user", "content": "A much longer question about things?"}]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """ASCII-only tiny policy and RM sharing one tokenizer (every token decodes to whole characters)."""
    d = str(save_tiny_model(tmp_path_factory.mktemp("ascii"), seed=1, ascii_only=True))
    policy, tok = load_causal_lm(d, device="cpu"), load_tokenizer(d)
    rm = build_reward_model(RewardModelSpec(base_model=d, finetune="full", max_length=256), device="cpu", seed=5).eval()
    return policy, tok, rm


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_fast_general_and_reference_paths_choose_the_same_tokens(models, temperature):
    cfg = DecodingConfig(k=4, alpha=0.5, temperature=temperature, max_new_tokens=10, stop_on_eos=False)
    out = {p: ControlledDecoder(*models, path=p).decode(PROMPTS, cfg, seed=3) for p in ("shared", "fast", "general")}
    out["reference"] = ReferenceDecoder(*models).decode(PROMPTS, cfg, seed=3)
    ref = [r.token_ids for r in out["reference"]]
    assert len(ref[0]) == 10 and len(set(ref[0])) > 2, "the tiny models must not be degenerate for this test to mean anything"
    for p in ("shared", "fast", "general"):
        assert [r.token_ids for r in out[p]] == ref, p
        for a, b in zip(out[p], out["reference"]):
            assert a.final_reward == pytest.approx(b.final_reward, abs=1e-4)


@pytest.mark.parametrize("finetune,lora_layers,depth", [("head", None, 2), ("lora", 1, 1), ("lora", None, 0)])
def test_shared_layers_are_found_and_give_the_reference_tokens(models, tmp_path, finetune, lora_layers, depth):
    """An RM fine-tuned on the policy's own base shares the layers below its adapters with it."""
    policy, tok, _ = models
    base = policy.config._name_or_path
    rm = build_reward_model(RewardModelSpec(base_model=base, finetune=finetune, lora_layers=lora_layers, max_length=256),
                            device="cpu", seed=4)
    with torch.no_grad():  # train-like perturbation of what the RM may change
        for p in rm.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    rm.save(tmp_path / "rm")
    rm = load_reward_model(str(tmp_path / "rm"), device="cpu")  # LoRA merged, as decoding uses it
    shared = ControlledDecoder(policy, tok, rm)
    assert shared.path == "shared" and shared.depth == depth
    cfg = DecodingConfig(k=5, alpha=0.2, max_new_tokens=10, stop_on_eos=False, direction="raise")
    ours = shared.decode(PROMPTS, cfg)
    ref = ReferenceDecoder(policy, tok, rm).decode(PROMPTS, cfg)
    assert [r.token_ids for r in ours] == [r.token_ids for r in ref]
    for a, b in zip(ours, ref):
        assert a.final_reward == pytest.approx(b.final_reward, abs=1e-4)


def test_batch_mates_do_not_change_a_prompts_result(models):
    cfg = DecodingConfig(k=3, alpha=1.0, temperature=1.0, max_new_tokens=8)
    dec = ControlledDecoder(*models)
    together = dec.decode(PROMPTS, cfg, sample_ids=[40, 41], seed=11)
    alone = dec.decode(PROMPTS[1:], cfg, sample_ids=[41], seed=11)
    assert dec.path == "shared" and len(together[1].token_ids) > 2
    assert alone[0].token_ids == together[1].token_ids
    assert alone[0].final_reward == pytest.approx(together[1].final_reward, abs=1e-5)


def test_k1_alpha0_is_plain_greedy_decoding(models):
    policy, tok, _ = models
    cfg = DecodingConfig(k=1, alpha=0.0, max_new_tokens=12, stop_on_eos=True)
    ours = ControlledDecoder(*models).decode(PROMPTS[:1], cfg)[0]
    ids = torch.tensor([encode_prompt(tok, PROMPTS[0], 1000)[0]])
    ref = policy.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                          min_new_tokens=1, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
    eos = tok.eos_token_id
    assert ours.token_ids == [t for t in ref if t != eos][: len(ours.token_ids)]
    assert ours.stopped == ("eos" if eos in ref else "max_new_tokens")


@pytest.mark.parametrize("stop_on_eos", [True, False])
def test_plain_perplexities_are_those_of_greedy_decoding_from_the_policy_alone(models, stop_on_eos):
    dec = ControlledDecoder(*models)
    greedy = dec.decode(PROMPTS, DecodingConfig(k=1, alpha=0.0, max_new_tokens=9, stop_on_eos=stop_on_eos))
    plain = dec.plain_perplexities(PROMPTS, 9, stop_on_eos=stop_on_eos)
    assert all(len(r.token_ids) >= 2 for r in greedy)
    assert plain == pytest.approx([r.perplexity for r in greedy], rel=1e-4)


def test_running_reward_equals_a_fresh_score_of_the_final_text(models):
    policy, tok, rm = models
    for direction in ("lower", "raise"):
        res = ControlledDecoder(*models).decode(PROMPTS, DecodingConfig(k=5, alpha=0.3, max_new_tokens=15, direction=direction))
        for prompt, r in zip(PROMPTS, res):
            enc = encode(rm.tokenizer, prompt, r.text, max_length=256)
            assert list(enc.ids[enc.response_start:]) == r.token_ids  # ASCII: the text re-tokenizes to the same ids
            assert r.final_reward == pytest.approx(score_sequences(rm, [enc.ids])[0].item(), abs=1e-4)
            assert r.steps[-1].running_reward == pytest.approx(r.final_reward) or r.steps[-1].is_eos


def test_step_records_hold_candidates_scores_and_the_choice(models):
    cfg = DecodingConfig(k=4, alpha=2.0, max_new_tokens=5, direction="lower", stop_on_eos=False)
    res = ControlledDecoder(*models).decode(PROMPTS[:1], cfg)[0]
    assert len(res.steps) == 5
    for s in res.steps:
        assert len(s.candidate_ids) == len(s.logprobs) == len(s.rewards) == len(s.scores) == 4
        assert s.logprobs == sorted(s.logprobs, reverse=True)
        for r, lp, sc in zip(s.rewards, s.logprobs, s.scores):
            assert sc == pytest.approx(-r + 2.0 * lp, abs=1e-5)
        assert s.chosen == max(range(4), key=lambda j: s.scores[j]) and s.token_id == s.candidate_ids[s.chosen]
        assert s.running_reward == pytest.approx(s.rewards[s.chosen])
    assert res.perplexity == pytest.approx(torch.tensor([s.logprobs[s.chosen] for s in res.steps]).mean().neg().exp().item(), rel=1e-5)


def test_lowering_finds_lower_rewards_than_raising(models):
    dec = ControlledDecoder(*models)
    low = dec.decode(PROMPTS, DecodingConfig(k=8, alpha=0.0, max_new_tokens=12, direction="lower"))
    high = dec.decode(PROMPTS, DecodingConfig(k=8, alpha=0.0, max_new_tokens=12, direction="raise"))
    for lo, hi in zip(low, high):
        assert lo.final_reward < hi.final_reward


def test_stream_yields_events_as_they_are_decided(models):
    stream = ControlledDecoder(*models).stream(PROMPTS, DecodingConfig(k=2, max_new_tokens=3, stop_on_eos=False))
    first = next(stream)
    assert (first.row, first.record.step, first.done) == (0, 0, False) and first.text == first.record.piece
    rest = list(stream)
    assert len(rest) == 5 and rest[-1].done


def test_decode_shows_every_step_to_on_event_as_the_result_grows(models):
    seen = []
    results = ControlledDecoder(*models).decode(PROMPTS, DecodingConfig(k=2, max_new_tokens=3, stop_on_eos=False),
                                                on_event=lambda e: seen.append((e.row, e.record.step, e.text)))
    assert [(row, step) for row, step, _ in seen] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert [text for row, _, text in seen if row == 0][-1] == results[0].text
    assert [text for row, _, text in seen if row == 1][-1] == results[1].text


def test_reward_guided_score_is_minus_or_plus_reward_plus_alpha_log_pi():
    rewards = torch.tensor([[1.0, -2.0], [0.5, 0.0]])   # (B, k)
    logp = torch.tensor([[-0.5, -1.0], [-2.0, -0.25]])  # (B, k)
    lower = DecodingConfig(alpha=2.0, direction="lower").scorer()
    assert isinstance(lower, CandidateScorer) and repr(lower) == "RewardGuidedScore(sign=-1.0, alpha=2.0)"
    assert torch.equal(lower(rewards, logp), torch.tensor([[-2.0, 0.0], [-4.5, -0.5]]))
    assert torch.equal(RewardGuidedScore(1.0, 0.5)(rewards, logp), torch.tensor([[0.75, -2.5], [-0.5, -0.125]]))
    assert torch.equal(rewards, torch.tensor([[1.0, -2.0], [0.5, 0.0]]))  # inputs never changed in place
    assert torch.equal(logp, torch.tensor([[-0.5, -1.0], [-2.0, -0.25]]))


@pytest.mark.parametrize("sign,alpha,needle", [(0.0, 1.0, "use -1.0 to push the reward down"), (-1.0, -0.1, "alpha >= 0"),
                                               (1.0, float("nan"), "alpha >= 0")])
def test_reward_guided_score_refuses_bad_arguments_with_what_to_do(sign, alpha, needle):
    with pytest.raises(ValueError, match=needle):
        RewardGuidedScore(sign, alpha)


def test_reward_guided_score_refuses_rewards_and_log_probs_of_different_shapes():
    with pytest.raises(ValueError, match=r"both \(B, k\)"):
        RewardGuidedScore(-1.0, 1.0)(torch.zeros(2, 3), torch.zeros(2, 4))


class PolicyOnlyScore(CandidateScorer):
    """Another rule behind the same interface: ignore the RM, keep the policy's own preference."""

    def __call__(self, rewards, logp):
        return logp.clone()


@pytest.mark.parametrize("path", ["shared", "fast", "general", "reference"])
def test_every_path_decodes_with_the_scorer_it_is_given(models, path):
    decoder = ReferenceDecoder(*models) if path == "reference" else ControlledDecoder(*models, path=path)
    ours = decoder.decode(PROMPTS, DecodingConfig(k=4, alpha=0.5, max_new_tokens=6, stop_on_eos=False), scorer=PolicyOnlyScore())
    greedy = decoder.decode(PROMPTS, DecodingConfig(k=1, alpha=0.0, max_new_tokens=6, stop_on_eos=False))
    assert [r.token_ids for r in ours] == [r.token_ids for r in greedy]
    assert all(s.scores == s.logprobs and s.chosen == 0 for r in ours for s in r.steps)


@pytest.mark.parametrize("kwargs,needle", [({"k": 0}, "k >= 1"), ({"alpha": -1.0}, "alpha >= 0"),
                                           ({"temperature": -0.5}, "0 for greedy"), ({"max_new_tokens": 0}, "at least 1"),
                                           ({"direction": "sideways"}, "'lower'")])
def test_bad_configs_are_refused_with_what_to_do(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        DecodingConfig(**kwargs)


def test_k_larger_than_vocabulary_and_too_many_tokens_are_refused(models):
    dec = ControlledDecoder(*models)
    with pytest.raises(ValueError, match="exceeds the policy's vocabulary"):
        list(dec.stream(PROMPTS, DecodingConfig(k=10_000)))
    with pytest.raises(DataError, match="raise the RM's max_length"):
        list(dec.stream(PROMPTS, DecodingConfig(max_new_tokens=255)))


def test_fast_path_is_refused_when_tokenizers_differ(models, tiny_model_dir):
    policy, _, _ = models
    other = build_reward_model(RewardModelSpec(base_model=tiny_model_dir, finetune="head"), device="cpu")
    with pytest.raises(ValueError, match="path='general'"):
        ControlledDecoder(policy, models[1], other, path="fast")
    assert ControlledDecoder(policy, models[1], other).path == "general"


def test_the_engine_has_no_reference_path_and_says_where_the_naive_loop_lives(models):
    with pytest.raises(ValueError, match=r"use one of \('auto', 'shared', 'fast', 'general'\).*tests/reference_decoding.py"):
        ControlledDecoder(*models, path="reference")
    assert ReferenceDecoder(*models).decode(PROMPTS[:1], DecodingConfig(k=2, max_new_tokens=2))[0].path == "reference"


def test_candidate_mask_lets_candidates_see_only_the_prefix():
    mask, pos = _candidate_mask(torch.tensor([[0, 1, 1]]), n_prev=1, k=2, kind="bool", dtype=torch.float32)
    assert mask[0, 0].int().tolist() == [[0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 1]]
    assert pos.tolist() == [[2, 3, 3]]


@pytest.mark.real_model
def test_real_smollm2_shared_path_matches_the_reference_loop(tmp_path):
    """Integration on the real SmolLM2: an RM with LoRA on its top 2 layers shares 28 layers with the policy."""
    from reform_engine.models import DEFAULT_MODEL

    policy, tok = load_causal_lm(DEFAULT_MODEL, device="cpu"), load_tokenizer(DEFAULT_MODEL)
    rm = build_reward_model(RewardModelSpec(base_model=DEFAULT_MODEL, lora_layers=2, max_length=256), device="cpu", seed=1)
    with torch.no_grad():
        for p in rm.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    rm.save(tmp_path / "rm")
    rm = load_reward_model(str(tmp_path / "rm"), device="cpu")
    prompts = [[{"role": "user", "content": "Give me one tip for sleeping better."}]]
    cfg = DecodingConfig(k=5, alpha=1.0, max_new_tokens=8, stop_on_eos=False)
    shared = ControlledDecoder(policy, tok, rm)
    assert (shared.path, shared.depth) == ("shared", 28)
    ours = shared.decode(prompts, cfg)[0]
    ref = ReferenceDecoder(policy, tok, rm).decode(prompts, cfg)[0]
    assert ours.token_ids == ref.token_ids and ours.text.strip()
    assert ours.final_reward == pytest.approx(ref.final_reward, abs=1e-3)
    enc = encode(rm.tokenizer, prompts[0], ours.text, max_length=256)
    assert ours.final_reward == pytest.approx(score_sequences(rm, [enc.ids])[0].item(), abs=1e-3)


def test_the_least_of_each_knob_in_limits_is_what_the_config_accepts():
    from reform_engine.decoding import LIMITS

    least = {name: low for name, (low, _) in LIMITS.items()}
    assert DecodingConfig(**least).max_new_tokens == 1
    for name, low in least.items():
        below = low - 1 if isinstance(low, int) else low - 0.01
        with pytest.raises(ValueError, match=f"{name}="):
            DecodingConfig(**{name: below})
    assert all(low <= getattr(DecodingConfig(), name) <= high for name, (low, high) in LIMITS.items())
