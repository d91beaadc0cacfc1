"""Reward models: a causal-LM backbone with a scalar head, or any sequence-classification RM.

A causal RM applies its head at every position, so one forward pass gives the partial reward
r(x, y<=i) of every prefix (``token_rewards``); the sequence reward is the value at the last real
token. Pitfalls guarded here: the pad token is always set; the score is read at the last non-pad
token whatever the padding side; position ids come from the attention mask so left padding does not
shift positions (identical texts score identically in any batch layout).

Remote code is the caller's to allow (``trust_remote_code`` of the functions here), never the
checkpoint's: a spec saying ``trust_remote_code: true``, or a backbone or base model whose
``config.json`` / ``tokenizer_config.json`` has an ``auto_map``, is refused unless the caller allowed it.

Checkpoint directory (written atomically by ``save``)::

    reward_model.json    RewardModelSpec (its base_model names the backbone: an id, a directory or the offline alias)
    head.safetensors     the scalar head
    adapter/             LoRA weights (finetune="lora") | backbone/ full weights (finetune="full")
    backbone.json        finetune lora/head: the fingerprint of the backbone it was trained on (not a copy of it)

A LoRA or head-only checkpoint is a few MB because it stores no backbone: loading resolves
``base_model`` again (``models.resolve_model_path``) and compares the backbone it finds with
``backbone.json``, so a checkpoint is never silently applied to other weights.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .configs import setting
from .models import (DEFAULT_MODEL, ModelError, from_pretrained, load_tokenizer, refuse_remote_code, remote_code_requests,
                     resolve_model_path)
from .runs import atomic_directory, recover_directory
from .runtime import resolve_device, resolve_dtype

FINETUNE_MODES = ("lora", "head", "full", "top")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SPEC_FILE = "reward_model.json"
TOP_FILE = "top_layers.safetensors"   # finetune=top: the trained top layers' weights and the final norm
BACKBONE_FILE = "backbone.json"
# The demo RM shipped with the repo (data/README.md has its card): LoRA + head on the offline SmolLM2, trained by
# train-rm on rows 0:132 of the demo set, so the app has a reward model before anyone trains one.
DEMO_RM_PATH = Path(__file__).resolve().parent.parent / "data" / "demo_rm" / "checkpoint"
_SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "intermediate_size", "vocab_size")


@dataclass
class RewardModelSpec:
    """What a checkpoint needs to rebuild its model (its ``reward_model.json``), and the model part of
    train-rm's recipe (``TrainRewardConfig.model``): the defaults are the training recipe's."""

    base_model: str = setting(DEFAULT_MODEL, "backbone: a model id or directory; smollm2-135m-instruct is the offline SmolLM2")
    finetune: str = setting("lora", "lora: cheap and strong; head: fastest, weakest; full: most memory; top: every weight of "
                                    "the top lora_layers layers (and the final norm), the layers below frozen",
                            choices=FINETUNE_MODES)
    lora_r: int = setting(16, "LoRA rank")
    lora_alpha: int = setting(32, "LoRA scale: the update is multiplied by lora_alpha / lora_r")
    lora_dropout: float = setting(0.0, "LoRA dropout; 0 keeps training bit-for-bit repeatable for its seed")
    lora_layers: int | None = setting(8, "LoRA (or, with finetune=top, full training) on the top N layers only (none = "
                                         "every layer): about 2x faster training, and decoding then computes the "
                                         "untouched lower layers once for policy and RM")
    use_chat_template: bool = setting(True, "format prompts with the tokenizer's chat template when it has one")
    max_length: int = setting(320, "tokens per prompt + response: the prompt is cut from the left to fit, the response "
                                   "never is (a training pair whose response cannot fit is skipped)")
    trust_remote_code: bool = setting(False, "the model needs remote code: a record written by the checkpoint, never a "
                                             "permission (the caller's Runtime.trust_remote_code gives that)")

    def __post_init__(self):
        if self.finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune={self.finetune!r}: finetune must be one of {FINETUNE_MODES}")
        if self.lora_r < 1:
            raise ValueError(f"lora_r={self.lora_r} must be >= 1")
        if self.lora_layers is not None and self.lora_layers < 1:
            raise ValueError(f"lora_layers={self.lora_layers} must be >= 1, or None for all layers")
        if self.max_length < 16:
            raise ValueError(f"max_length={self.max_length} is too small to hold a prompt and a response; use >= 16")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B,) index of the last real token, for left or right padding alike."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)


def top_parameter_names(backbone: nn.Module, n_top: int | None) -> list[str]:
    """Names of the backbone parameters finetune=top trains: every weight of the top ``n_top`` decoder
    layers (None: all of them) and of the final norm above them."""
    total = backbone.config.num_hidden_layers
    start = total - min(n_top or total, total)
    marks = tuple(f".layers.{i}." for i in range(start, total)) + (".norm.",)
    names = [n for n, _ in backbone.named_parameters() if any(m in "." + n for m in marks)]
    if not any(".layers." in "." + n for n in names):
        raise ModelError(f"finetune=top needs a decoder whose layers are named 'layers.<i>'; "
                         f"{type(backbone).__name__} has none: use lora or full")
    return names


def backbone_fingerprint(backbone: nn.Module) -> dict:
    """What identifies a backbone's weights (before any LoRA): its config's shape fields, parameter
    count, dtype and a sha256 over every parameter's name, dtype, shape and bytes (~0.6 s for SmolLM2)."""
    h, count, dtype = hashlib.sha256(), 0, None
    for name, p in backbone.named_parameters():
        t = p.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        count, dtype = count + t.numel(), dtype or str(t.dtype).removeprefix("torch.")
    config = backbone.config.to_dict()
    return {"shapes": {k: config.get(k) for k in _SHAPE_KEYS}, "parameters": count, "dtype": dtype, "sha256": h.hexdigest()}


def verify_backbone(directory: Path, spec: "RewardModelSpec", path: str, found: dict) -> None:
    """Raise ModelError when the backbone ``spec.base_model`` resolved to (``path``, fingerprint
    ``found``) is not the one checkpoint ``directory`` was trained on. The weights' hash is compared
    only when both are in the same dtype (a bfloat16 load of float32 weights has other bytes)."""
    file = directory / BACKBONE_FILE
    if not file.is_file():
        return  # written before fingerprints were recorded: nothing to compare with
    try:
        want = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{file} is unreadable ({exc}); restore it from the checkpoint's source") from exc
    differs = [f"{k} {want['shapes'].get(k)} vs {found['shapes'].get(k)}" for k in _SHAPE_KEYS
               if want.get("shapes", {}).get(k) != found["shapes"].get(k)]
    if want.get("parameters") != found["parameters"]:
        differs.append(f"{want.get('parameters')} vs {found['parameters']} parameters")
    if not differs and want.get("dtype") == found["dtype"] and want.get("sha256") != found["sha256"]:
        differs.append(f"weights sha256 {str(want.get('sha256'))[:12]}… vs {found['sha256'][:12]}…")
    if differs:
        raise ModelError(f"{directory} was trained on another backbone than {spec.base_model!r} gives here ({path}): "
                         f"{'; '.join(differs)} (checkpoint vs found). Give the model it was trained on as base_model in "
                         f"{directory / SPEC_FILE}, or, for the offline SmolLM2, delete {path} so it is converted again")


class CausalRewardModel(nn.Module):
    """Backbone (no LM head) + Linear(hidden, 1). ``tokenizer`` and ``spec`` ride along as attributes."""

    is_causal = True

    def __init__(self, backbone: nn.Module, spec: RewardModelSpec, tokenizer=None):
        super().__init__()
        self.backbone, self.spec, self.tokenizer = backbone, spec, tokenizer
        self.backbone_fingerprint: dict | None = None  # of the backbone before LoRA; saved beside a LoRA/head checkpoint
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def token_rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, past_key_values=None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) new ids -> (B, T) reward of every prefix ending at each new position.

        ``attention_mask`` is 2D over cached + new tokens, (B, P+T), or an explicit 4D mask
        (B, 1, T, P+T) (then ``position_ids`` (B, T) must be given). With a ``past_key_values`` cache
        (an empty ``DynamicCache`` to prefill, a filled one to extend) the cache is updated in place.
        """
        if position_ids is None:  # from the mask, so left padding keeps positions 0..n-1
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            past_key_values=past_key_values, use_cache=past_key_values is not None)
        hidden = out.last_hidden_state  # (B, T, H)
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)  # (B, T)

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B,) reward read at the last non-pad token."""
        rewards = self.token_rewards(input_ids, attention_mask)
        return rewards.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)

    def forward(self, input_ids=None, attention_mask=None, packed=None, lower=None) -> torch.Tensor:
        """``score(input_ids, attention_mask)``; or, given a ``prompt_once.Packed`` batch, its members'
        rewards (N,), starting at layer ``lower[0]`` from the hidden states ``lower[1]`` if given (a
        trunk cache's). One entry point, so a DDP wrapper's forward covers both."""
        if packed is None:
            return self.score(input_ids, attention_mask)
        from .prompt_once import packed_rewards
        return packed_rewards(self, packed, lower)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        with atomic_directory(directory) as tmp:
            (tmp / SPEC_FILE).write_text(json.dumps(dataclasses.asdict(self.spec), indent=2))
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(tmp / "head.safetensors"))
            if self.spec.finetune == "lora":
                self.backbone.save_pretrained(tmp / "adapter")
                adapter_config = tmp / "adapter" / "adapter_config.json"  # PEFT records the local path: name it instead
                config = json.loads(adapter_config.read_text())
                adapter_config.write_text(json.dumps({**config, "base_model_name_or_path": self.spec.base_model}, indent=2))
                (tmp / "adapter" / "README.md").unlink(missing_ok=True)  # PEFT's empty model card, holding only that path
            elif self.spec.finetune == "full":
                self.backbone.save_pretrained(tmp / "backbone", safe_serialization=True)
            elif self.spec.finetune == "top":
                params = dict(self.backbone.named_parameters())
                save_file({n: params[n].detach().cpu().contiguous() for n in top_parameter_names(self.backbone, self.spec.lora_layers)},
                          str(tmp / TOP_FILE))
            if self.spec.finetune != "full" and self.backbone_fingerprint is not None:
                (tmp / BACKBONE_FILE).write_text(json.dumps({"base_model": self.spec.base_model, **self.backbone_fingerprint},
                                                            indent=2))
        return Path(directory)


def build_reward_model(spec: RewardModelSpec, *, device: str = "auto", dtype: str = "float32", seed: int = 0,
                       trust_remote_code: bool = False) -> CausalRewardModel:
    """A fresh, trainable RM on ``spec.base_model``: head initialised from ``seed``, LoRA if asked.
    ``trust_remote_code``: the caller allows code shipped with the base model to run."""
    from transformers import AutoModel

    path = resolve_model_path(spec.base_model)
    requests = remote_code_requests(path)
    refuse_remote_code(requests, trust_remote_code)
    spec = dataclasses.replace(spec, trust_remote_code=bool(requests))  # recorded: loading it will need the caller's leave
    try:
        backbone = AutoModel.from_pretrained(path, dtype=resolve_dtype(dtype), use_safetensors=True,
                                             trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not load backbone {spec.base_model!r} ({exc}); only safetensors weights are loaded") from exc
    for p in backbone.parameters():
        p.requires_grad_(spec.finetune == "full")
    fingerprint = backbone_fingerprint(backbone) if spec.finetune != "full" else None
    if spec.finetune == "top":
        params = dict(backbone.named_parameters())
        for name in top_parameter_names(backbone, spec.lora_layers):
            params[name].requires_grad_(True)
    torch.manual_seed(seed)
    if spec.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        n_layers = backbone.config.num_hidden_layers
        start = n_layers - spec.lora_layers if spec.lora_layers else 0
        layers = list(range(start, n_layers)) if start > 0 else None  # N >= the model's depth: every layer
        lora = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                          target_modules=list(LORA_TARGETS), layers_to_transform=layers,
                          layers_pattern="layers" if layers else None)
        backbone = get_peft_model(backbone, lora)
    model = CausalRewardModel(backbone, spec, load_tokenizer(spec.base_model, trust_remote_code=trust_remote_code))
    model.backbone_fingerprint = fingerprint
    return model.to(resolve_device(device))


def read_spec(directory: str | Path) -> RewardModelSpec:
    """The RewardModelSpec of a checkpoint directory, or ModelError naming its file."""
    file = Path(directory) / SPEC_FILE
    try:
        return RewardModelSpec(**json.loads(file.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"{file} is not a readable reward-model spec ({exc}); give a checkpoint directory written by train-rm") from exc


def load_causal_reward_model(directory: str | Path, *, device: str = "auto", dtype: str = "float32",
                             trainable: bool = False, trust_remote_code: bool = False) -> CausalRewardModel:
    """Rebuild a saved causal RM. For inference LoRA is merged into the backbone (faster forward).
    ``trust_remote_code``: the caller allows code shipped with the checkpoint or its base model to run;
    without it a checkpoint that asks for remote code is refused before any of its files is imported."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    directory = Path(directory)
    recover_directory(directory)  # a save killed between its two renames left the previous checkpoint as .old
    spec = read_spec(directory)
    base = resolve_model_path(spec.base_model)
    source = directory / "backbone" if spec.finetune == "full" else base
    requests = [f"{directory / SPEC_FILE} (trust_remote_code: true)"] if spec.trust_remote_code else []
    for model_dir in dict.fromkeys([str(source), base]):  # the backbone's weights and config; the base's tokenizer
        requests += remote_code_requests(model_dir)
    refuse_remote_code(requests, trust_remote_code)
    backbone = AutoModel.from_pretrained(source, dtype=resolve_dtype(dtype), use_safetensors=True,
                                         trust_remote_code=trust_remote_code)
    fingerprint = None
    if spec.finetune != "full":
        fingerprint = backbone_fingerprint(backbone)
        verify_backbone(directory, spec, base, fingerprint)
    if spec.finetune == "lora":
        from peft import PeftModel

        backbone = PeftModel.from_pretrained(backbone, directory / "adapter", is_trainable=trainable)
        if not trainable:
            backbone = backbone.merge_and_unload()
    top = top_parameter_names(backbone, spec.lora_layers) if spec.finetune == "top" else []
    if top:
        _load_top_layers(backbone, directory / TOP_FILE, top)
    for p in backbone.parameters():
        p.requires_grad_(trainable and spec.finetune == "full")
    params = dict(backbone.named_parameters())
    for name in top:
        params[name].requires_grad_(trainable)
    for name, p in backbone.named_parameters():
        if trainable and spec.finetune == "lora" and "lora_" in name:
            p.requires_grad_(True)
    model = CausalRewardModel(backbone, spec, load_tokenizer(spec.base_model, trust_remote_code=trust_remote_code))
    model.backbone_fingerprint = fingerprint
    model.head.load_state_dict(load_file(str(directory / "head.safetensors")))
    model.head.requires_grad_(trainable)
    model = model.to(resolve_device(device))
    return model.train(trainable) if trainable else model.eval()


def _load_top_layers(backbone: nn.Module, file: Path, names: list[str]) -> None:
    """Put a finetune=top checkpoint's trained weights into the base backbone, or ModelError naming what is off."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(file))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{file} is missing or unreadable ({exc}): a finetune=top checkpoint keeps its trained layers there; "
                         f"restore the checkpoint from its source") from exc
    missing, extra = sorted(set(names) - set(state)), sorted(set(state) - set(names))
    if missing or extra:
        raise ModelError(f"{file} does not hold the top {len(names)} parameters its spec names (missing {missing[:3]}, "
                         f"unexpected {extra[:3]}): lora_layers in {file.parent / SPEC_FILE} must be the number it was trained with")
    backbone.load_state_dict(state, strict=False)


class SequenceClassifierRewardModel(nn.Module):
    """Any AutoModelForSequenceClassification RM with one output. No per-position rewards: traces
    fall back to scoring prefixes in batches (the slow path)."""

    is_causal = False

    def __init__(self, model: nn.Module, tokenizer, use_chat_template: bool = True, max_length: int = 512):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.spec = RewardModelSpec(base_model=getattr(model.config, "_name_or_path", "seq-cls"), finetune="full",
                                    use_chat_template=use_chat_template, max_length=max_length)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # The HF head pools at the last non-pad token itself; right padding keeps positions natural.
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()

    forward = score


def load_reward_model(name: str, *, device: str = "auto", dtype: str = "float32", trust_remote_code: bool = False,
                      max_length: int = 512):
    """A checkpoint directory written by ``save`` -> CausalRewardModel; any other id/path ->
    SequenceClassifierRewardModel (safetensors only). ``trust_remote_code`` comes from the caller only."""
    path = Path(name).expanduser()
    recover_directory(path)
    if (path / SPEC_FILE).is_file():
        return load_causal_reward_model(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    from transformers import AutoModelForSequenceClassification

    model = from_pretrained(AutoModelForSequenceClassification, name, dtype=dtype, trust_remote_code=trust_remote_code,
                            failure=lambda exc: f"{name!r} is neither a REFORM RM checkpoint (no {SPEC_FILE}) nor a loadable "
                                                f"sequence-classification model ({exc})")
    if model.config.num_labels != 1:
        raise ModelError(f"{name!r} has {model.config.num_labels} outputs; a reward model needs exactly 1")
    tok = load_tokenizer(name, trust_remote_code=trust_remote_code)
    return SequenceClassifierRewardModel(model.to(resolve_device(device)).eval(), tok, max_length=max_length)
