"""Tiny random models built from a config (no files, no network): for tests and quick demos.

The tokenizer is byte-level (every string round-trips) with SmolLM-style chat special tokens, so
the same code paths run as with the real model, just with a 2-layer, 32-wide transformer.
"""
from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
                 "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")


def build_tiny_tokenizer(ascii_only: bool = False):
    """Byte-level tokenizer. ``ascii_only`` keeps only printable ASCII and newline (other bytes become
    the unk token): every token then decodes to whole characters, as text-based paths need."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 byte symbols
    if ascii_only:
        symbols = [chr(b) for b in range(33, 127)] + ["\u0120", "\u010a"]  # byte-level symbols of ASCII, space, "\n"
    for ch in symbols:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_causal_lm(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True,
                         initializer_range=0.2)  # wide init: varied logits, so decoding tests are not degenerate
    return LlamaForCausalLM(config).eval()


def save_tiny_model(directory: str | Path, seed: int = 0, ascii_only: bool = False) -> Path:
    """Write a tiny model + tokenizer as a normal safetensors model directory; return it."""
    directory = Path(directory)
    tok = build_tiny_tokenizer(ascii_only)
    model = build_tiny_causal_lm(len(tok), seed=seed)
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return directory
