"""Whether a "lower" variant is still an appropriate *chosen* response: it does not comply with a
harmful request.

A variant decoded "lower" from a preferred pair becomes the chosen side of the pair it adds (y' over
y-). On harmless data the prompt is usually a harmful request, so a variant that carries it out (a
how-to, the address asked for) would teach the retrained RM to prefer compliance: a mislabeled pair.
"raise" variants become the rejected side, where compliance is the point, so by default they are not
checked.

Two sources, either or both (:class:`AppropriatenessConfig`):
  rules   refusal/deflection markers against compliance signals (step lists, "here's how", imperatives);
          the variant is inappropriate when a compliance signal fires and no refusal marker does.
          No prompt is read: the rule judges the response alone, so a how-to for a harmless request
          fires too (benchmarks/RESULTS.md measures how it labels the data's chosen and rejected).
  judge   an independent reward model, never the one being fixed: the variant is appropriate when
          the judge scores it at least as high as its pair's rejected response y-, i.e. the judge
          agrees with the pair the variant would add (variant preferred over y-).
Each verdict is (appropriate, reason): True / False, or None when not checked or not scorable, and
the reason names the source and the marker or scores that decided it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .configs import setting

SOURCES = ("off", "rules", "judge", "both")
APPLIES = ("lower", "both")

# A refusal or a deflection: the response declines, warns, or asks back instead of carrying the request out.
REFUSAL = {
    "declines": r"\bI (?:can(?:no|')?t|won'?t|will not|am not (?:able|going|willing) to|'m not (?:able|going|willing) to|"
                r"am unable to|'m unable to|would(?:n'?t| not)|do(?:n'?t| not) want to) (?:help|assist|do|provide|tell|give|"
                r"share|recommend|support|condone|encourage|answer|participate|be part|say|talk)",
    "apologises": r"\bI(?:'m| am) (?:so |very |really )?sorry\b",
    "uncomfortable": r"\bI(?:'m| am) not (?:comfortable|okay|ok) with\b|\bmakes? me (?:uncomfortable|feel uncomfortable)",
    "judges it wrong": r"\b(?:that|this|it|doing that|which)(?:'s| is| would be| sounds| seems) (?:very |really |pretty )?"
                       r"(?:illegal|wrong|not (?:okay|ok|right|appropriate|nice|legal|a good idea)|inappropriate|"
                       r"dangerous|harmful|unethical|immoral|abusive|a bad idea|a crime|against the law|cruel|mean)\b",
    "advises against": r"\bI(?:'d| would) (?:strongly )?(?:advise|recommend|suggest|urge you) (?:against|not)\b|"
                       r"\b(?:please )?(?:don'?t|do not) do (?:that|this|it)\b|\byou (?:shouldn'?t|should not|must not)\b",
    "not I should": r"\bI (?:don'?t|do not) think (?:I|we) (?:should|can)\b|\bI (?:don'?t|do not) think (?:that|it|this) "
                    r"(?:'s|is|would be|'d be) (?:a good idea|right|okay|ok|appropriate|legal|ethical|fair|nice)",
    "asks back": r"\b(?:why|what) (?:do|would) you (?:want|mean|need)\b|\bcan you (?:clarify|explain|tell me (?:more|why|what))\b|"
                 r"\bwhat do you mean\b|\bI(?:'m| am) not sure (?:what|I understand|why)|\bcan you give me (?:a (?:little|bit) )?more\b|"
                 r"\bwhat are you (?:hoping|trying)\b|\bwhy don'?t you tell me\b",
    "does not know": r"\bI (?:don'?t|do not) (?:know|understand)\b|\bI(?:'m| am) not (?:aware|familiar)\b",
    "points to help": r"\b(?:call|contact|talk to|speak (?:to|with)|see|reach out to) (?:the police|911|a (?:doctor|lawyer|"
                      r"therapist|counselor|counsellor|professional)|someone you trust|a hotline)\b|\bseek (?:help|professional)",
}

# Carrying a request out: instructions, options handed over, an eager yes.
COMPLIANCE = {
    "here's how": r"\bhere(?:'s| is| are) (?:how|what you|a few|some|the steps|one|my (?:advice|suggestion|recipe))\b",
    "steps": r"(?m)^\s*(?:\d+[.)]|step \d+|[-*•])\s+\w|\bstep (?:one|1)\b|\bfirst(?:ly)?,? .{0,200}?\b(?:then|next|second(?:ly)?|"
             r"after that|finally)\b",
    "the way to": r"\bthe (?:best|easiest|simplest|quickest|fastest|safest|most effective) (?:way|method|thing) (?:to|is)\b|"
                  r"\b(?:one|another|a good|an easy) (?:way|option|method|trick|idea) (?:to|is|would be)\b",
    "you can": r"\byou (?:can|could|might|should|would|'d|'ll|will) (?:(?:also|just|then|probably|easily) )?(?:try|use|get|buy|"
               r"find|take|put|make|mix|add|go|look|hide|tell them|steal|grab|break|cut|pour|search|pretend|"
               r"need to|want to)\b",
    "imperative": r"(?:^|[.!?]\s+)(?:Try|Use|Get|Buy|Take|Put|Mix|Add|Find|Grab|Hide|Break|Pour|Cut|Just|Start|Tell them|"
                  r"Look for|Go to|Make sure)\b",
    "offers ideas": r"\bsome (?:ideas|options|ways|tips|suggestions|examples)\b|\bI(?:'d| would) (?:recommend|suggest)(?! (?:against|not))\b",
    "eager yes": r"^\s*(?:sure|absolutely|of course|no problem)\b|\bI(?:'d| would) be (?:happy|glad) to\b|\bI(?:'d| would) "
                 r"(?:try|use|go with|start (?:by|with))\b",
}

_REFUSAL = {name: re.compile(rx, re.IGNORECASE) for name, rx in REFUSAL.items()}
_COMPLIANCE = {name: re.compile(rx, re.IGNORECASE) for name, rx in COMPLIANCE.items()}


@dataclass(frozen=True)
class Verdict:
    appropriate: bool | None         # None: not checked, or the source could not judge it
    reason: str                      # the source and what decided it, e.g. "rules: complies (here's how: 'Here is how')"


def _first(patterns: dict[str, re.Pattern], text: str) -> tuple[str, str] | None:
    """(name, matched text) of the earliest match among ``patterns`` in ``text``, or None."""
    hits = [(m.start(), name, m.group(0)) for name, rx in patterns.items() if (m := rx.search(text))]
    return (min(hits)[1], " ".join(min(hits)[2].split())) if hits else None


def judge_by_rules(text: str) -> Verdict:
    """The rule verdict on one response: inappropriate (complies) when a compliance signal fires and no
    refusal marker does; a refusal marker anywhere wins, since a response that declines and then offers
    a safe alternative ("I can't help with that, but you could talk to ...") is the appropriate kind."""
    refusal, compliance = _first(_REFUSAL, text), _first(_COMPLIANCE, text)
    if refusal:
        return Verdict(True, f"rules: refuses ({refusal[0]}: {refusal[1]!r})")
    if compliance:
        return Verdict(False, f"rules: complies ({compliance[0]}: {compliance[1]!r})")
    return Verdict(True, "rules: no compliance signal")


def judge_by_scores(r_variant: float, r_rejected: float) -> Verdict:
    """The judge rule: appropriate when the judge RM scores the variant at least as high as its pair's
    rejected response. The variant is about to be labeled *better* than y-; the judge, trained apart,
    must not say the opposite. A tie does not refute the label, so it passes. Unscorable: None."""
    if not (math.isfinite(r_variant) and math.isfinite(r_rejected)):
        return Verdict(None, "judge: not scored (too long or empty)")
    ok = r_variant >= r_rejected
    return Verdict(ok, f"judge: {r_variant:.3f} {'>=' if ok else '<'} rejected {r_rejected:.3f}")


def combine(*verdicts: Verdict) -> Verdict:
    """Both sources: inappropriate when either says so, appropriate when every one that could judge says so."""
    known = [v for v in verdicts if v.appropriate is not None]
    reason = "; ".join(v.reason for v in verdicts)
    if any(v.appropriate is False for v in known):
        return Verdict(False, reason)
    return Verdict(True if known else None, reason)


@dataclass
class AppropriatenessConfig:
    source: str = setting("off", "whether 'lower' variants are checked for complying with a harmful request: off, rules "
                                 "(refusal markers vs compliance signals), judge (an independent RM: the variant must score at "
                                 "least as high as its pair's rejected response) or both (inappropriate when either says so)",
                          choices=SOURCES)
    judge_rm: str = setting("", "the judge RM checkpoint for source judge/both: trained apart, never the RM being fixed")
    applies_to: str = setting("lower", "which variants are checked: lower (they become chosen, where compliance is the "
                                       "error) or both (raise variants become rejected, where compliance is the point: "
                                       "checking them only informs)", choices=APPLIES)

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"appropriateness source={self.source!r}; use one of {SOURCES}")
        if self.applies_to not in APPLIES:
            raise ValueError(f"appropriateness applies_to={self.applies_to!r}; use one of {APPLIES}")
        if self.source in ("judge", "both") and not self.judge_rm.strip():
            raise ValueError(f"appropriateness source={self.source!r} needs a judge_rm checkpoint (an RM trained apart); "
                             f"give one, or use source='rules'")

    @property
    def enabled(self) -> bool:
        return self.source != "off"

    def applies(self, direction: str) -> bool:
        return self.enabled and (self.applies_to == "both" or direction == self.applies_to)

    def check_independent(self, reward_model: str) -> None:
        """Refuse a judge that is the RM being fixed (it would approve its own failures)."""
        if self.source in ("judge", "both") and reward_model.strip() and _same_path(self.judge_rm, reward_model):
            raise ValueError(f"the appropriateness judge_rm {self.judge_rm!r} is the reward model being fixed; give a judge "
                             f"trained apart (e.g. on other rows or another seed), or use source='rules'")


def _same_path(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def judge_appropriateness(config: AppropriatenessConfig, items: Sequence[tuple[str, Sequence[dict], str, str]],
                          judge=None, max_length: int = 1024) -> list[Verdict]:
    """One verdict per (direction, prompt, variant text, original rejected); directions the config does
    not apply to get Verdict(None, ""). ``judge``: the loaded judge RM (source judge/both), scored in one
    score_pairs call as (variant, rejected) pairs."""
    out = [Verdict(None, "") for _ in items]
    todo = [i for i, (d, _, text, _) in enumerate(items) if config.applies(d) and text.strip()]
    by_judge: dict[int, Verdict] = {}
    if config.source in ("judge", "both") and todo:
        if judge is None:
            raise ValueError("appropriateness: source needs the judge RM loaded; pass judge=load_reward_model(judge_rm)")
        from .data import PreferencePair
        from .scoring import score_pairs

        duels = [PreferencePair(str(i), tuple(items[i][1]), items[i][2], items[i][3]) for i in todo]
        got = score_pairs(judge, duels, max_length=max_length, skip_too_long=True)
        scored = [i for n, i in enumerate(todo) if n not in got.skipped]
        by_judge = {i: judge_by_scores(float(a), float(b)) for i, a, b in zip(scored, got.r_chosen, got.r_rejected)}
    for i in todo:
        parts = []
        if config.source in ("rules", "both"):
            parts.append(judge_by_rules(items[i][2]))
        if config.source in ("judge", "both"):
            parts.append(by_judge.get(i, judge_by_scores(float("nan"), float("nan"))))
        out[i] = combine(*parts)
    return out
