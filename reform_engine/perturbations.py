"""Perturbations that should not change which response is better, for RM robustness tests.

Each is a small pure function ``(response, prompt_text, rng) -> response``, deterministic for the
``random.Random`` it is given. Each names the side of the pair it is applied to:

- "rejected": the change *inflates* the worse response with a feature RMs often reward spuriously
  (length, formatting, echoing the question); a robust RM still prefers the chosen one.
- "chosen": the change *degrades the surface* of the better response without touching its content
  (case, typos, punctuation, noise); a robust RM still prefers it.

The robustness metric (evaluation of issue 4) compares the win rate on clean and perturbed pairs.
"""
from __future__ import annotations

import difflib
import itertools
import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

# Content-free sentences: they add length and a helpful tone, no information.
FILLER = (
    "I hope this helps.",
    "Let me know if you have any other questions.",
    "This is an important topic, and it is worth thinking about carefully.",
    "There are many ways to look at this, and every situation is different.",
    "Thank you for asking such a thoughtful question.",
    "Feel free to reach out if anything is unclear.",
    "It is always a good idea to consider all the options.",
)
EMOJI = ("🙂", "👍", "✨", "🎉", "💡", "🔥", "✅")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE.split(text.strip()) if s]


def verbosity(response: str, prompt: str, rng: random.Random) -> str:
    """Append 2-3 content-free filler sentences."""
    return response.rstrip() + " " + " ".join(rng.sample(FILLER, rng.randint(2, 3)))


def capitalization(response: str, prompt: str, rng: random.Random) -> str:
    """Upper-case the whole response."""
    return response.upper()


def repetition(response: str, prompt: str, rng: random.Random) -> str:
    """Repeat one sentence right after itself (a one-sentence response is repeated whole)."""
    parts = sentences(response)
    if len(parts) <= 1:
        return f"{response.strip()} {response.strip()}"
    i = rng.randrange(len(parts))
    return " ".join(parts[: i + 1] + [parts[i]] + parts[i + 1:])


def misspelling(response: str, prompt: str, rng: random.Random, rate: float = 0.1) -> str:
    """Swap two neighbouring inner letters in a ``rate`` share of the words of 4+ letters."""
    def typo(m: re.Match) -> str:
        w = m.group(0)
        if len(w) < 4 or rng.random() >= rate:
            return w
        i = rng.randrange(1, len(w) - 2)
        return w[:i] + w[i + 1] + w[i] + w[i + 2:]
    return re.sub(r"[A-Za-z]+", typo, response)


def punctuation_removal(response: str, prompt: str, rng: random.Random) -> str:
    """Delete all ASCII punctuation."""
    return response.translate(str.maketrans("", "", string.punctuation))


def markdown(response: str, prompt: str, rng: random.Random) -> str:
    """Dress the response as a formatted answer: a bold heading and one bullet per sentence."""
    return "**Answer**\n\n" + "\n".join(f"- {s}" for s in sentences(response) or [response])


def prompt_echo(response: str, prompt: str, rng: random.Random) -> str:
    """Open by repeating the user's last message back."""
    last = prompt.rsplit("Human:", 1)[-1].strip() if prompt else ""
    return f'You asked: "{last}" {response.strip()}' if last else response


def whitespace_noise(response: str, prompt: str, rng: random.Random, rate: float = 0.15) -> str:
    """Turn a ``rate`` share of the spaces into double spaces or line breaks."""
    return re.sub(" ", lambda m: rng.choice(("  ", "\n")) if rng.random() < rate else " ", response)


def emoji_noise(response: str, prompt: str, rng: random.Random) -> str:
    """Put an emoji after every sentence."""
    return " ".join(f"{s} {rng.choice(EMOJI)}" for s in sentences(response) or [response])


@dataclass(frozen=True)
class Perturbation:
    name: str
    side: str                                            # "chosen" or "rejected"
    fn: Callable[[str, str, random.Random], str]

    @property
    def description(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0]


PERTURBATIONS: dict[str, Perturbation] = {p.name: p for p in (
    Perturbation("verbosity", "rejected", verbosity),
    Perturbation("capitalization", "chosen", capitalization),
    Perturbation("repetition", "chosen", repetition),
    Perturbation("misspelling", "chosen", misspelling),
    Perturbation("punctuation_removal", "chosen", punctuation_removal),
    Perturbation("markdown", "rejected", markdown),
    Perturbation("prompt_echo", "rejected", prompt_echo),
    Perturbation("whitespace_noise", "chosen", whitespace_noise),
    Perturbation("emoji_noise", "chosen", emoji_noise),
)}


def perturb(name: str, response: str, prompt: str = "", seed: int = 0) -> str:
    """Apply perturbation ``name`` with its own RNG seeded by ``seed``."""
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; choose from {sorted(PERTURBATIONS)}")
    return PERTURBATIONS[name].fn(response, prompt, random.Random(seed))


def align_tokens(original: Sequence[str], perturbed: Sequence[str]) -> list[tuple[int | None, int | None]]:
    """A common alignment of a response's tokens and its perturbed version's, so their reward traces can
    be drawn against one axis: one column per position, (index into ``original`` or None, index into
    ``perturbed`` or None), both indices increasing. Tokens equal up to case and surrounding whitespace
    share a column (a capitalised or re-spaced word lines up with its original); a run replaced by
    another is laid out side by side, the longer run's extra tokens against a gap."""
    def norm(pieces: Sequence[str]) -> list[str]:
        return [p.strip().casefold() for p in pieces]

    columns: list[tuple[int | None, int | None]] = []
    matcher = difflib.SequenceMatcher(None, norm(original), norm(perturbed), autojunk=False)
    for _, a0, a1, b0, b1 in matcher.get_opcodes():  # equal / replace / delete / insert, in order
        columns += itertools.zip_longest(range(a0, a1), range(b0, b1))
    return columns
