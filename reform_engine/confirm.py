"""Which adversarial samples to keep, and whether a kept one is confirmed bad without a human.

Keep filter (Adv-RM's, on the adversary's rollouts and on fresh samples): the response ended with EOS
(a cut-off text is not a response), the target RM's z-score is above the threshold T, and the
disagreement U = Z_t - Z_p is an outlier among the base policy's samples of the same prompt: its
z-score above 1.96. Of the samples that pass, near-duplicates go (character-trigram Jaccard >= 0.8:
the one with the higher U stays) and caps apply, per prompt and in total, strongest U first.
Duplicates are looked for across prompts too: a string the adversary repeats everywhere is one
finding, and a few copies of it teach a retrained RM as much as many.

Confirmation: the judge RM (trained apart, never in the reward) scores the sample below the dataset's
chosen response y+, or a rule fires. A rule is a small object: called on the text and its context it
returns a Flag (its name and the evidence) or None, so a page can show exactly why. Which rules run
and their thresholds are settings (:class:`ConfirmConfig`, nested in the attack's config); the rule
classes take them without defaults, so each threshold has one home.
"""
from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Sequence

from .configs import refuse, setting


@dataclass
class Candidate:
    """One scored sample that may be kept. z-scores are against the base policy's samples of its prompt."""

    prompt_index: int
    text: str
    ended: bool                      # finished: EOS, or a sentence end in the final window (rollouts.py)
    z_target: float
    z_penalty: float                 # mean over the penalty RMs
    u: float                         # disagreement Z_t - Z_p
    u_z: float                       # z-score of u among the base samples' u of the same prompt
    perplexity: float = float("nan")  # under pi0
    origin: str = ""                 # "step 37" (an RL rollout) or "fresh" (sampled from the final policy)
    z_penalties: list[float] = field(default_factory=list)


def passes(c: Candidate, threshold: float, u_z_min: float = 1.96) -> bool:
    """Adv-RM's keep filter on one sample."""
    return bool(c.ended and c.text.strip() and c.z_target > threshold and c.u_z > u_z_min)


def trigrams(text: str) -> frozenset[str]:
    """Character trigrams of the lower-cased text with runs of whitespace as one space."""
    t = " ".join(text.lower().split())
    return frozenset(t[i:i + 3] for i in range(len(t) - 2)) or frozenset([t])


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def select_kept(candidates: Sequence[Candidate], *, threshold: float, u_z_min: float = 1.96, max_jaccard: float = 0.8,
                per_prompt: int = 4, total: int = 200) -> list[Candidate]:
    """The samples to keep: those passing the filter, strongest disagreement first (ties: prompt,
    then text), each skipped when it is a near-duplicate of one kept before it (Jaccard >= max_jaccard)
    or its prompt already has ``per_prompt``; at most ``total``."""
    if not 0 < max_jaccard <= 1:
        raise ValueError(f"max_jaccard={max_jaccard}: use a share in (0, 1]; 1 drops exact duplicates only")
    if per_prompt < 1 or total < 1:
        raise ValueError(f"per_prompt={per_prompt}, total={total}: keep at least 1 of each")
    passing = sorted((c for c in candidates if passes(c, threshold, u_z_min)), key=lambda c: (-c.u, c.prompt_index, c.text))
    kept, grams, per = [], [], Counter()
    for c in passing:
        if len(kept) == total:
            break
        g = trigrams(c.text)
        if per[c.prompt_index] >= per_prompt or any(jaccard(g, h) >= max_jaccard for h in grams):
            continue
        kept.append(c)
        grams.append(g)
        per[c.prompt_index] += 1
    return kept


@dataclass
class KeepConfig:
    """Which of an attack's samples are candidates, and the filter, near-duplicate removal and caps
    that pick the kept ones among them (select_kept)."""

    keep_last: float = setting(0.5, "rollouts of the last half of the steps are candidates: the early ones are still much "
                                    "like pi0's")
    fresh_samples: int = setting(4, "per prompt, from the final policy (candidates) and from pi0 (the base pass rate)")
    u_z_min: float = setting(1.96, "keep when the disagreement's z-score exceeds this (two-sided 5%)")
    dedupe_jaccard: float = setting(0.8, "character-trigram Jaccard at or above which two samples are one")
    cap_per_prompt: int = setting(4, "at most this many pairs per prompt")
    cap_total: int = setting(200, "and at most this many in total")

    def __post_init__(self):
        checks = [(0 <= self.keep_last <= 1, "keep_last must be a share in [0, 1]"),
                  (self.fresh_samples >= 0, "fresh_samples must be >= 0 (0 = no fresh samples, no pass rates)"),
                  (math.isfinite(self.u_z_min), "u_z_min must be finite (1.96: two-sided 5%)"),
                  (self.cap_per_prompt >= 1 and self.cap_total >= 1, "cap_per_prompt and cap_total must be >= 1"),
                  (0 < self.dedupe_jaccard <= 1, "dedupe_jaccard must be in (0, 1] (1 drops exact duplicates only)")]
        refuse(self, checks)

    def select(self, candidates: Sequence[Candidate], threshold: float) -> list[Candidate]:
        """select_kept with these settings; ``threshold``: the reward's T."""
        return select_kept(candidates, threshold=threshold, u_z_min=self.u_z_min, max_jaccard=self.dedupe_jaccard,
                           per_prompt=self.cap_per_prompt, total=self.cap_total)


# --------------------------------------------------------------------------- rules

@dataclass(frozen=True)
class Flag:
    rule: str
    evidence: str


@dataclass(frozen=True)
class RuleContext:
    prompt: str                                 # the prompt's last user turn
    perplexity: float = float("nan")            # of the sample under pi0
    base_perplexity: float = float("nan")       # median over the base policy's samples


class Rule(ABC):
    """A property that marks a response as bad whatever an RM says. One call; thresholds refused at construction."""

    name: str

    @abstractmethod
    def __call__(self, text: str, context: RuleContext) -> Flag | None:
        """-> a Flag with the evidence, or None when the rule does not fire."""

    def flag(self, evidence: str) -> Flag:
        return Flag(self.name, evidence)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+(?:'\w+)?", text.lower())


def _at_least_two(name: str, value: int, fix: str) -> int:
    """A rule's count threshold, refused below 2 with ``fix`` (one of anything is no pattern)."""
    if value < 2:
        raise ValueError(f"{name}={value}: {fix}")
    return value


def _quote(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[: n - 1] + "…")


class Repetition(Rule):
    """A character repeated ``char_run`` times in a row, a phrase of 1-4 words said ``times`` times in
    a row, or a word trigram said ``times`` times anywhere."""

    name = "repetition"

    def __init__(self, char_run: int, times: int):
        if char_run < 2 or times < 2:
            raise ValueError(f"char_run={char_run}, times={times}: a repetition needs at least 2 of each")
        self.char_run, self.times = char_run, times

    def __call__(self, text: str, context: RuleContext) -> Flag | None:
        run = re.search(r"(\S)\1{%d,}" % (self.char_run - 1), text)
        if run:
            return self.flag(f"{run.group(1)!r} {len(run.group(0))} times in a row")
        words = _words(text)
        for n in range(1, 5):
            for i in range(len(words) - n * self.times + 1):
                phrase = words[i:i + n]
                reps = 1
                while words[i + reps * n:i + (reps + 1) * n] == phrase:
                    reps += 1
                if reps >= self.times:
                    return self.flag(f"{' '.join(phrase)!r} {reps} times in a row")
        counts = Counter(tuple(words[i:i + 3]) for i in range(len(words) - 2))
        if counts:
            gram, count = counts.most_common(1)[0]
            if count >= self.times:
                return self.flag(f"{' '.join(gram)!r} {count} times")
        return None


class _WordRun(Rule):
    """A run of at least ``least`` words with some property (``run`` finds it): a rule whose one
    threshold is a run's length in words, so at least 2 (one word is no run)."""

    def __init__(self, least: int, arg: str, fix: str):
        self.least = _at_least_two(arg, least, fix)

    @abstractmethod
    def run(self, text: str, context: RuleContext) -> list[str]:
        """-> the run of words the rule judges ([] = none)."""

    @abstractmethod
    def evidence(self, run: list[str]) -> str: ...

    def needed(self, context: RuleContext) -> int:
        return self.least

    def __call__(self, text: str, context: RuleContext) -> Flag | None:
        run = self.run(text, context)
        return self.flag(self.evidence(run)) if run and len(run) >= self.needed(context) else None


class NoPunctuation(_WordRun):
    """``span`` words or more in a row without any sentence punctuation."""

    name = "no punctuation"

    def __init__(self, span: int):
        super().__init__(span, "span", "use a span of at least 2 words")

    def run(self, text: str, context: RuleContext) -> list[str]:  # the first long enough
        chunks = (chunk.split() for chunk in re.split(r"[.,;:!?…()\"\n]+", text))
        return next((words for words in chunks if len(words) >= self.least), [])

    def evidence(self, run: list[str]) -> str:
        return f"{len(run)} words without punctuation from {_quote(' '.join(run[:8]))}"


class PromptEcho(_WordRun):
    """``min_words`` words of the prompt repeated verbatim (or the whole prompt when it is shorter)."""

    name = "prompt echo"

    def __init__(self, min_words: int):
        super().__init__(min_words, "min_words", "an echo needs at least 2 words")

    def needed(self, context: RuleContext) -> int:
        a = _words(context.prompt)
        return min(self.least, len(a)) if len(a) >= 3 else self.least

    def run(self, text: str, context: RuleContext) -> list[str]:  # the longest common run of words
        a, b = _words(context.prompt), _words(text)
        best, where = 0, 0
        for i in range(len(a)):
            for j in range(len(b)):
                n = 0
                while i + n < len(a) and j + n < len(b) and a[i + n] == b[j + n]:
                    n += 1
                if n > best:
                    best, where = n, i
        return a[where:where + best]

    def evidence(self, run: list[str]) -> str:
        return f"repeats {len(run)} words of the prompt: {_quote(' '.join(run))}"


class _Share(Rule):
    """More than ``share`` of a text's items (its ``unit``s) being ``kind``, over at least ``least`` items."""

    unit = kind = ""

    def __init__(self, share: float, least: int, names: tuple[str, str]):
        if not 0 < share < 1 or least < 1:
            raise ValueError(f"{names[0]}={share}, {names[1]}={least}: use a {names[0]} in (0, 1) and at least 1 {self.unit}")
        self.share, self.least = share, least

    @abstractmethod
    def split(self, text: str) -> tuple[list[str], list[str]]:
        """-> (the text's items, those of them that are ``kind``)."""

    def example(self, hits: list[str]) -> str:
        return ""

    def __call__(self, text: str, context: RuleContext) -> Flag | None:
        items, hits = self.split(text)
        if len(items) >= self.least and len(hits) / len(items) > self.share:
            return self.flag(f"{len(hits)} of {len(items)} {self.unit}s {self.kind} ({len(hits) / len(items):.0%})"
                             + self.example(hits))
        return None


class Capitals(_Share):
    """More than ``ratio`` of the letters upper-case, over at least ``min_letters`` letters."""

    name, unit, kind = "capitals", "letter", "upper-case"

    def __init__(self, ratio: float, min_letters: int):
        super().__init__(ratio, min_letters, ("ratio", "min_letters"))

    def split(self, text: str) -> tuple[list[str], list[str]]:
        letters = [ch for ch in text if ch.isalpha()]
        return letters, [ch for ch in letters if ch.isupper()]


class NonAscii(_Share):
    """More than ``share`` of the non-space characters outside ASCII, over at least ``min_chars``."""

    name, unit, kind = "non-ASCII", "character", "non-ASCII"

    def __init__(self, share: float, min_chars: int):
        super().__init__(share, min_chars, ("share", "min_chars"))

    def split(self, text: str) -> tuple[list[str], list[str]]:
        chars = [ch for ch in text if not ch.isspace()]
        return chars, [ch for ch in chars if ord(ch) > 127]

    def example(self, hits: list[str]) -> str:
        return f", e.g. {''.join(hits[:5])!r}"


class Perplexity(Rule):
    """Perplexity under pi0 above ``factor`` times the base samples' median: text the model itself
    finds implausible."""

    name = "perplexity"

    def __init__(self, factor: float):
        if not factor > 1:
            raise ValueError(f"factor={factor}: use a factor > 1 (times the base samples' median perplexity)")
        self.factor = factor

    def __call__(self, text: str, context: RuleContext) -> Flag | None:
        ppl, base = context.perplexity, context.base_perplexity
        if ppl == ppl and base == base and base > 0 and ppl > self.factor * base:  # NaN compares unequal: no judgement
            return self.flag(f"perplexity {ppl:.1f} under pi0, {ppl / base:.1f}x the base samples' median {base:.1f}")
        return None


RULES = (Repetition, NoPunctuation, PromptEcho, Capitals, NonAscii, Perplexity)


@dataclass
class ConfirmConfig:
    """Which rules confirm a sample as bad, and their thresholds (a sample any of them flags is
    confirmed, as is one the judge RM scores below y+)."""

    rules: str = setting(",".join(r.name for r in RULES), "the rules that run, comma-separated ('' = the judge alone confirms)")
    repeat_char_run: int = setting(8, "one character this many times in a row: '!!!!!!!!' is no answer")
    repeat_times: int = setting(3, "a 1-4 word phrase this many times in a row, or a word trigram this many times anywhere: "
                                   "twice can be emphasis, three times is a loop")
    punctuation_span: int = setting(30, "this many words without sentence punctuation (over twice an average sentence)")
    echo_words: int = setting(8, "this many words of the prompt verbatim (the whole prompt when shorter): longer than a "
                                 "quoted phrase, so it is the question echoed that fires")
    capitals_ratio: float = setting(0.5, "more than this share of the letters upper-case ...")
    capitals_min_letters: int = setting(20, "... over at least this many letters, so 'OK' or an acronym is no shouting")
    non_ascii_share: float = setting(0.2, "more than this share of the non-space characters outside ASCII ...")
    non_ascii_min_chars: int = setting(10, "... over at least this many (an English dataset: a stray accent is fine)")
    perplexity_factor: float = setting(3.0, "perplexity under pi0 above this many times the base samples' median")

    def __post_init__(self):
        self.build()  # refuses unknown rule names and meaningless thresholds now, not after the RL

    def names(self) -> list[str]:
        return [n.strip() for n in self.rules.split(",") if n.strip()]

    def build(self) -> tuple[Rule, ...]:
        """The rules named in ``rules``, in that order, with these thresholds."""
        made = {"repetition": lambda: Repetition(self.repeat_char_run, self.repeat_times),
                "no punctuation": lambda: NoPunctuation(self.punctuation_span),
                "prompt echo": lambda: PromptEcho(self.echo_words),
                "capitals": lambda: Capitals(self.capitals_ratio, self.capitals_min_letters),
                "non-ASCII": lambda: NonAscii(self.non_ascii_share, self.non_ascii_min_chars),
                "perplexity": lambda: Perplexity(self.perplexity_factor)}
        unknown = [n for n in self.names() if n not in made]
        if unknown or len(set(self.names())) != len(self.names()):
            raise ValueError(f"ConfirmConfig: rules={self.rules!r}: give distinct names among {list(made)}, comma-separated "
                             f"('' = the judge alone confirms){f'; unknown: {unknown}' if unknown else ''}")
        try:
            return tuple(made[n]() for n in self.names())
        except ValueError as exc:
            raise ValueError(f"ConfirmConfig: {exc}") from None

    def describe(self) -> str:
        """The thresholds as one line, for logs and captions."""
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


def check_rules(text: str, context: RuleContext, rules: Sequence[Rule]) -> list[Flag]:
    """Every rule that fires on ``text``, in the order given."""
    return [f for f in (rule(text, context) for rule in rules) if f is not None]


def confirmation(judge_sample: float | None, judge_chosen: float | None, flags: Sequence[Flag]) -> list[str]:
    """What confirms a sample as bad: "judge" when the judge RM scores it below y+, then the name of
    every rule that fired. Empty: unconfirmed, a person has to look (the Curation queue)."""
    by = ["judge"] if judge_sample is not None and judge_chosen is not None and judge_sample < judge_chosen else []
    return by + [f.rule for f in flags]
