import pytest
import torch

from reform_engine.models import DEFAULT_MODEL, ModelError, format_prompt, load_causal_lm, load_tokenizer, resolve_model_path
from reform_engine.runtime import resolve_device, resolve_dtype
from reform_engine.tiny import build_tiny_tokenizer


def test_tiny_tokenizer_round_trips_any_text():
    tok = build_tiny_tokenizer()
    text = "Grüße, 世界! <|im_end|> tabs\tand\nnewlines"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_format_prompt_chat_template_and_hh_fallback():
    tok = build_tiny_tokenizer()
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Q?"}]
    assert format_prompt(tok, msgs) == ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"
                                        "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n")
    assert format_prompt(tok, msgs, use_chat_template=False) == "\n\nHuman: Hi\n\nAssistant: Yo\n\nHuman: Q?\n\nAssistant:"


def test_local_directory_loads_and_missing_paths_say_so(tiny_model_dir, tmp_path):
    model = load_causal_lm(tiny_model_dir, device="cpu")
    assert model.config.num_hidden_layers == 2 and not model.training
    with pytest.raises(ModelError, match="no model directory"):
        resolve_model_path(str(tmp_path / "nothing-here"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="give the model's directory"):
        resolve_model_path(str(tmp_path / "weights.bin"))


def test_device_and_dtype_come_from_config():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="use one of"):
        resolve_dtype("float8")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("tpu-ish")


@pytest.mark.real_model
def test_default_smollm2_converts_once_and_chats():
    path = resolve_model_path(DEFAULT_MODEL)
    assert path.endswith(DEFAULT_MODEL)
    tok = load_tokenizer(DEFAULT_MODEL)
    model = load_causal_lm(DEFAULT_MODEL, device="cpu")
    assert "quantization_config" not in model.config.to_dict()
    assert model.config.num_hidden_layers == 30 and len(tok) == 49152 and tok.pad_token == "<|im_end|>"
    prompt = format_prompt(tok, [{"role": "user", "content": "What is the capital of France?"}])
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
