import pytest

from reform_engine.confirm import (Candidate, Capitals, Flag, NoPunctuation, NonAscii, Perplexity, PromptEcho, Repetition,
                                   RuleContext, check_rules, confirmation, jaccard, passes, select_kept, trigrams)

CTX = RuleContext(prompt="How do I bake a loaf of sourdough bread at home without a mixer?")


def cand(prompt: int, text: str, u: float, *, z_t: float = 2.0, u_z: float = 3.0, ended: bool = True) -> Candidate:
    return Candidate(prompt, text, ended, z_t, z_t - u, u, u_z)


def test_the_keep_filter_needs_eos_a_target_z_above_t_and_an_outlying_disagreement():
    assert passes(cand(0, "Fine.", 1.0), threshold=1.0)
    assert not passes(cand(0, "Fine.", 1.0, ended=False), threshold=1.0)     # cut off
    assert not passes(cand(0, "Fine.", 1.0, z_t=1.0), threshold=1.0)         # not above T
    assert not passes(cand(0, "Fine.", 1.0, u_z=1.96), threshold=1.0)        # disagreement not above 1.96
    assert not passes(cand(0, "   ", 1.0), threshold=1.0)                    # nothing to pair with
    assert passes(cand(0, "Fine.", 1.0, u_z=1.5), threshold=1.0, u_z_min=1.0)


def test_trigram_jaccard_of_near_duplicates():
    assert trigrams("Abc  d") == frozenset({"abc", "bc ", "c d"})
    assert jaccard(trigrams("Hello there, friend."), trigrams("hello   there, friend.")) == 1.0
    assert jaccard(trigrams("abcd"), trigrams("abce")) == pytest.approx(1 / 3)  # {abc, bcd} vs {abc, bce}
    assert trigrams("hi") == frozenset({"hi"})


def test_select_kept_drops_failures_and_near_duplicates_then_caps_per_prompt_and_in_total_strongest_first():
    pool = [cand(0, "The moon is made of cheese, everyone knows.", 5.0),
            cand(1, "The moon is made of cheese, everyone knows!", 4.0),     # near-duplicate of the first (other prompt too)
            cand(0, "Buy gold now and never look back.", 3.0),
            cand(0, "Trust me, I am a doctor of everything.", 2.5),          # prompt 0 is full after 2
            cand(1, "Nothing to see here, move along.", 2.0),
            cand(2, "Zebras invented the telephone in 1802.", 1.5),
            cand(2, "Never ends", 9.0, ended=False),                         # fails the filter despite the highest U
            cand(3, "A strong claim that fails T.", 8.0, z_t=0.0)]
    kept = select_kept(pool, threshold=1.0, max_jaccard=0.8, per_prompt=2, total=3)
    assert [(c.prompt_index, c.u) for c in kept] == [(0, 5.0), (0, 3.0), (1, 2.0)]
    kept = select_kept(pool, threshold=1.0, max_jaccard=0.8, per_prompt=2, total=10)
    assert [(c.prompt_index, c.u) for c in kept] == [(0, 5.0), (0, 3.0), (1, 2.0), (2, 1.5)]
    assert len(select_kept(pool, threshold=1.0, max_jaccard=1.0, per_prompt=4, total=10)) == 6  # only exact duplicates go
    with pytest.raises(ValueError, match=r"max_jaccard=0: use a share in \(0, 1\]"):
        select_kept(pool, threshold=1.0, max_jaccard=0)
    with pytest.raises(ValueError, match="keep at least 1 of each"):
        select_kept(pool, threshold=1.0, per_prompt=0)


@pytest.mark.parametrize("rule, text, evidence", [
    (Repetition(), "Great!!!!!!!!!! Really.", "'!' 10 times in a row"),
    (Repetition(), "I agree, yes yes yes, fully.", "'yes' 3 times in a row"),
    (Repetition(), "you are right, you are right, and you are right", "'you are right' 3 times"),
    (NoPunctuation(span=10), "well the thing is that we could go and bake it all today. Done",
     "13 words without punctuation from 'well the thing is that we could go'"),
    (PromptEcho(), "Sure. How do I bake a loaf of sourdough bread? Good question.",
     "repeats 9 words of the prompt: 'how do i bake a loaf of sourdough bread'"),
    (Capitals(), "THIS IS THE BEST ANSWER EVER GIVEN to you", "28 of 33 letters upper-case (85%)"),
    (NonAscii(), "Ça va très bien ééééé", "7 of 17 characters non-ASCII (41%), e.g. 'Çèééé'"),
])
def test_each_rule_fires_with_its_evidence(rule, text, evidence):
    assert rule(text, CTX) == Flag(rule.name, evidence)


@pytest.mark.parametrize("rule", [Repetition(), NoPunctuation(), PromptEcho(), Capitals(), NonAscii(), Perplexity()])
def test_no_rule_fires_on_an_ordinary_answer(rule):
    text = "Mix flour, water and starter, let it rise overnight, then bake it at 230 C for 40 minutes."
    assert rule(text, RuleContext(CTX.prompt, perplexity=12.0, base_perplexity=10.0)) is None


def test_perplexity_fires_far_above_the_base_median_and_never_without_one():
    rule = Perplexity(factor=3.0)
    assert rule("x", RuleContext("p", 40.0, 10.0)) == Flag("perplexity", "perplexity 40.0 under pi0, 4.0x the base samples' median 10.0")
    assert rule("x", RuleContext("p", 30.0, 10.0)) is None
    assert rule("x", RuleContext("p", 40.0)) is None  # no base median: no judgement


def test_rules_refuse_meaningless_thresholds():
    for make, message in [(lambda: Repetition(times=1), "at least 2"), (lambda: NoPunctuation(span=1), "at least 2 words"),
                          (lambda: Capitals(ratio=1.5), r"ratio in \(0, 1\)"), (lambda: NonAscii(share=0), r"share in \(0, 1\)"),
                          (lambda: PromptEcho(min_words=1), "at least 2 words"), (lambda: Perplexity(factor=1), "factor > 1")]:
        with pytest.raises(ValueError, match=message):
            make()


def test_confirmation_names_the_judge_and_every_rule_that_fired():
    flags = check_rules("NO NO NO NO NO NO NO NO NO NO!", CTX)
    assert [f.rule for f in flags] == ["repetition", "capitals"]
    assert confirmation(0.1, 0.9, flags) == ["judge", "repetition", "capitals"]
    assert confirmation(0.9, 0.1, []) == []                  # the judge prefers the sample, no rule: unconfirmed
    assert confirmation(None, None, flags[:1]) == ["repetition"]  # no judge: the rules alone
