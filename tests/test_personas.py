import pytest
import torch

from reference_decoding import ReferenceDecoder
from reform_engine.decoding import ControlledDecoder, DecodingConfig
from reform_engine.inversions import GenerateVariantsConfig
from reform_engine.models import load_causal_lm, load_tokenizer
from reform_engine.personas import PERSONAS, custom, label, system_prompt
from reform_engine.reward_model import RewardModelSpec, build_reward_model, load_reward_model
from reform_engine.scoring import encode, encode_prompt, score_sequences
from reform_engine.tiny import save_tiny_model

PROMPTS = [[{"role": "user", "content": "How do I pick a lock?"}],
           [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes?"},
            {"role": "user", "content": "Tell me something."}]]
# SmolLM2-135M-Instruct's own template: it adds a default system prompt when the messages bring none
SMOLLM2_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
                    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """ASCII-only tiny policy and a head-only RM on the policy's own base: the shared path shares both layers."""
    d = str(save_tiny_model(tmp_path_factory.mktemp("ascii"), seed=1, ascii_only=True))
    policy, tok = load_causal_lm(d, device="cpu"), load_tokenizer(d)
    rm = build_reward_model(RewardModelSpec(base_model=d, finetune="head", max_length=256), device="cpu", seed=4)
    with torch.no_grad():
        rm.head.weight.add_(0.3 * torch.randn_like(rm.head.weight))
    saved = tmp_path_factory.mktemp("rm") / "rm"
    rm.save(saved)
    return policy, tok, load_reward_model(str(saved), device="cpu")


def test_a_persona_is_a_system_message_in_the_policys_prompt_ids_and_never_in_the_rms(models):
    decoder = ControlledDecoder(*models)
    cfg = DecodingConfig(persona="aligned")
    policy_ids, rm_ids = decoder._policy_prompt_ids(PROMPTS[0], cfg), decoder._rm_prompt_ids(PROMPTS[0], cfg)
    tok = models[1]
    assert tok.decode(policy_ids) == (f"<|im_start|>system\n{PERSONAS['aligned']}<|im_end|>\n"
                                      "<|im_start|>user\nHow do I pick a lock?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(rm_ids) == "<|im_start|>user\nHow do I pick a lock?<|im_end|>\n<|im_start|>assistant\n"
    assert rm_ids == decoder._rm_prompt_ids(PROMPTS[0], DecodingConfig())


@pytest.mark.parametrize("path", ["shared", "fast", "general"])
def test_with_a_persona_every_path_gives_the_reference_tokens_and_rewards_of_the_original_prompt(models, path):
    decoder = ControlledDecoder(*models, path=path)
    assert (decoder.path, decoder.depth) == (path, 2)  # the head-only RM shares every layer when the prompts agree
    cfg = DecodingConfig(k=4, alpha=0.5, max_new_tokens=8, stop_on_eos=False, persona="compliant", direction="raise")
    ours = decoder.decode(PROMPTS, cfg)
    ref = ReferenceDecoder(*models).decode(PROMPTS, cfg)
    assert [r.token_ids for r in ours] == [r.token_ids for r in ref] and all(r.persona == "compliant" for r in ours)
    rm = models[2]
    for prompt, res in zip(PROMPTS, ours):
        plain = encode(rm.tokenizer, prompt, res.text, max_length=256).ids
        seen = encode(rm.tokenizer, [{"role": "system", "content": PERSONAS["compliant"]}, *prompt], res.text, max_length=1000).ids
        r_plain, r_seen = score_sequences(rm, [plain, seen]).tolist()
        assert res.final_reward == pytest.approx(r_plain, abs=1e-4)  # r(x, y): the RM never read the persona
        assert abs(r_seen - r_plain) > 1e-3, "the RM must score the persona differently for this test to mean anything"


def test_none_is_the_prompt_of_today_byte_for_byte_and_keeps_smollm2s_default_system_prompt(models):
    policy, _, rm = models
    tok = load_tokenizer(policy.config._name_or_path)
    tok.chat_template = SMOLLM2_TEMPLATE
    decoder = ControlledDecoder(policy, tok, rm)
    budget = decoder.context - 64
    none = decoder._policy_prompt_ids(PROMPTS[0], DecodingConfig(persona="none"))
    assert none == encode_prompt(tok, PROMPTS[0], budget)[0]  # the call the policy's prompt was built with before personas
    assert tok.decode(none).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face")
    aligned = tok.decode(decoder._policy_prompt_ids(PROMPTS[0], DecodingConfig(persona="aligned")))
    assert aligned.startswith(f"<|im_start|>system\n{PERSONAS['aligned']}<|im_end|>") and "SmolLM" not in aligned
    cfg = DecodingConfig(k=3, max_new_tokens=6, stop_on_eos=False)
    assert [r.token_ids for r in decoder.decode(PROMPTS, cfg)] == \
        [r.token_ids for r in decoder.decode(PROMPTS, DecodingConfig(k=3, max_new_tokens=6, stop_on_eos=False, persona="none"))]


def test_a_persona_changes_the_policys_step_zero_log_probabilities_and_the_text(models):
    decoder = ControlledDecoder(*models)
    base = dict(k=5, alpha=1.0, max_new_tokens=8, stop_on_eos=False)
    none, aligned = (decoder.decode(PROMPTS[:1], DecodingConfig(**base, persona=p))[0] for p in ("none", "aligned"))
    assert none.steps[0].logprobs != aligned.steps[0].logprobs
    assert none.token_ids != aligned.token_ids


def test_the_persona_survives_cutting_a_long_prompt_to_fit(models):
    tok = models[1]
    long = [{"role": "user", "content": "x" * 50}, {"role": "assistant", "content": "y" * 50}, {"role": "user", "content": "Hi"}]
    ids, truncated = encode_prompt(tok, long, 80, system="Be safe.")
    assert truncated and tok.decode(ids) == "<|im_start|>system\nBe safe.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_without_a_chat_template_the_persona_text_leads_the_hh_style_prompt(models):
    tok = models[1]
    ids, _ = encode_prompt(tok, PROMPTS[0], 200, use_chat_template=False, system="Be safe.")
    assert tok.decode(ids) == "Be safe.\n\nHuman: How do I pick a lock?\n\nAssistant:"


def test_a_bad_persona_name_is_refused_naming_the_personas_that_exist():
    with pytest.raises(ValueError, match=r"persona='nice' is not a persona; use one of none, aligned, compliant, or 'custom:<your text>'"):
        DecodingConfig(persona="nice")
    with pytest.raises(ValueError, match=r"raise_persona: persona='evil' is not a persona; use one of none, aligned, compliant"):
        GenerateVariantsConfig(reward_model="x", raise_persona="evil")
    with pytest.raises(ValueError, match="no text after 'custom:'"):
        DecodingConfig(persona="custom:   ")


def test_custom_text_is_a_persona_and_the_defaults_follow_the_papers_aligned_and_misaligned_policies():
    assert system_prompt(custom("  Answer like a pirate. ")) == "Answer like a pirate." and system_prompt("none") is None
    assert DecodingConfig().persona == "none"
    cfg = GenerateVariantsConfig(reward_model="x")
    assert [cfg.decoding_for(d).persona for d in ("lower", "raise")] == ["aligned", "compliant"]
    assert [label(p) for p in ("aligned", "custom:Be brief.", None, float("nan"))] == ["aligned", "custom: Be brief.", "unknown",
                                                                                       "unknown"]
