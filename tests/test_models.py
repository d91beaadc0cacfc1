import os
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


def test_a_model_directory_cannot_grant_itself_remote_code(remote_code_model):
    directory, marker = remote_code_model
    for load in (load_causal_lm, load_tokenizer):
        with pytest.raises(ModelError, match="remote code is not allowed") as refused:
            load(str(directory))
        assert (f"{directory / 'config.json'} (auto_map: configuration_marker.MarkerConfig, "
                "configuration_marker.MarkerForCausalLM) asks to run Python code") in str(refused.value)
        assert "--trust-remote-code" in str(refused.value)
    assert not marker.exists()


def test_a_tokenizer_config_auto_map_is_refused_naming_that_file(tmp_path):
    from conftest import write_remote_code_model

    marker = tmp_path / "marker"
    directory = write_remote_code_model(tmp_path / "m", marker, tokenizer_only=True)
    with pytest.raises(ModelError, match="tokenizer_config.json") as refused:
        load_tokenizer(str(directory))
    assert str(directory / "tokenizer_config.json") in str(refused.value) and not marker.exists()


def test_the_callers_flag_is_what_lets_shipped_code_run(remote_code_model, tmp_path, monkeypatch):
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))  # keep the copied module out of ~/.cache
    directory, marker = remote_code_model
    model = load_causal_lm(str(directory), device="cpu", trust_remote_code=True)
    assert type(model).__name__ == "MarkerForCausalLM" and marker.read_text() == "shipped code ran"


@pytest.fixture()
def no_hub(monkeypatch):
    """Any hub download or host lookup fails the test: names must be refused before the network."""
    import socket

    import huggingface_hub
    import transformers.utils.hub

    def called(*args, **kwargs):
        raise AssertionError(f"network used: {args[:2]}")
    for module in (huggingface_hub, huggingface_hub.file_download, transformers.utils.hub):
        if hasattr(module, "hf_hub_download"):
            monkeypatch.setattr(module, "hf_hub_download", called)
    monkeypatch.setattr(socket, "getaddrinfo", called)
    return called


def test_names_that_cannot_be_hub_ids_are_missing_local_paths_at_once(no_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("etc/passwd/x", "my models/rm", "org/name/../x", "a--b/c"):
        with pytest.raises(ModelError, match=f"no model directory at {name}; give an existing directory"):
            load_tokenizer(name)


def test_a_hub_id_offline_says_at_once_that_the_hub_cannot_be_reached(no_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("etc/passwd", "HuggingFaceTB/SmolLM2-135M-Instruc"):
        for load in (load_tokenizer, load_causal_lm):
            with pytest.raises(ModelError, match=r"the model hub cannot be reached \(HF_HUB_OFFLINE is set\); "
                                                 r"check the spelling, or give a local model directory"):
                load(name)


def test_check_model_name_refuses_a_mistyped_id_offline_and_passes_what_can_load_without_loading_it(no_hub, monkeypatch,
                                                                                                   tiny_model_dir, tmp_path):
    from reform_engine import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"^smollm2-135m-instrct is not a local directory, .* check the spelling, or give a "
                                         r"local model directory \(the default model is smollm2-135m-instruct\)$"):
        models.check_model_name("smollm2-135m-instrct")
    with pytest.raises(ModelError, match="no model directory at ./nowhere"):
        models.check_model_name("./nowhere")
    monkeypatch.setattr(models, "ensure_default_model", lambda: pytest.fail("checking a name must not convert the default"))
    assert [models.check_model_name(n) for n in (models.DEFAULT_MODEL, "default", tiny_model_dir)] == [None, None, None]


def test_a_hub_host_that_does_not_resolve_means_no_network_without_a_download(no_hub, monkeypatch):
    import socket

    import reform_engine.models as models

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(models, "_resolved_hosts", set())
    with pytest.raises(ModelError, match=r"cannot be reached \(huggingface.co does not resolve: no network\)"):
        resolve_model_path("etc/passwd")


def test_a_load_runs_in_the_calling_thread_without_a_pool_of_loader_threads(tiny_model_dir, monkeypatch):
    import concurrent.futures

    from reform_engine.models import load_causal_lm
    from reform_engine.reward_model import load_reward_model  # noqa: F401  (imported: the setting holds for RMs as well)

    assert os.environ.get("HF_DEACTIVATE_ASYNC_LOAD") == "1"
    pools = []
    real = concurrent.futures.ThreadPoolExecutor.__init__
    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "__init__",
                        lambda self, *a, **k: (pools.append(k), real(self, *a, **k))[1])
    load_causal_lm(tiny_model_dir, device="cpu")
    assert pools == []
