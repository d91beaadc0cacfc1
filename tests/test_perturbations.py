import random

import pytest

from reform_engine.perturbations import (PERTURBATIONS, align_tokens, capitalization, emoji_noise, markdown, misspelling,
                                         perturb, prompt_echo, punctuation_removal, repetition, sentences, verbosity,
                                         whitespace_noise)

TEXT = "Boil the water first. Then add the pasta! Stir it often?"


def rng(seed=0):
    return random.Random(seed)


def test_sentences_split_on_end_punctuation():
    assert sentences(TEXT) == ["Boil the water first.", "Then add the pasta!", "Stir it often?"]


def test_capitalization_and_punctuation_removal_literal():
    assert capitalization("Hi, you.", "", rng()) == "HI, YOU."
    assert punctuation_removal("Well, it's fine!", "", rng()) == "Well its fine"


def test_verbosity_only_appends_filler():
    out = verbosity(TEXT, "", rng())
    assert out.startswith(TEXT + " ") and len(sentences(out)) in (5, 6)


def test_repetition_repeats_one_sentence_in_place():
    out = repetition(TEXT, "", rng(1))
    parts = sentences(out)
    assert len(parts) == 4 and any(parts[i] == parts[i + 1] for i in range(3))
    assert repetition("Only one.", "", rng()) == "Only one. Only one."


def test_misspelling_swaps_inner_letters_at_the_given_rate():
    out = misspelling("absolutely wonderful", "", rng(), rate=1.0)
    assert out != "absolutely wonderful" and sorted(out) == sorted("absolutely wonderful")
    assert out[0] == "a" and out.split()[1][0] == "w"  # first letters untouched
    assert misspelling("absolutely wonderful", "", rng(), rate=0.0) == "absolutely wonderful"


def test_markdown_prompt_echo_whitespace_and_emoji():
    assert markdown("One. Two.", "", rng()) == "**Answer**\n\n- One.\n- Two."
    assert prompt_echo("Sure.", "\n\nHuman: Hi\n\nAssistant: Yo\n\nHuman: Why?", rng()) == 'You asked: "Why?" Sure.'
    noisy = whitespace_noise("a b c d e f g h i j", "", rng(), rate=1.0)
    assert noisy.replace("\n", " ").replace("  ", " ") == "a b c d e f g h i j" and noisy != "a b c d e f g h i j"
    assert emoji_noise("One. Two.", "", rng()).count(" ") == 3


def test_every_perturbation_is_deterministic_for_a_seed_and_changes_text():
    assert len(PERTURBATIONS) >= 8
    for name, p in PERTURBATIONS.items():
        assert p.side in ("chosen", "rejected") and p.description
        a, b = perturb(name, TEXT, "\n\nHuman: How?", seed=3), perturb(name, TEXT, "\n\nHuman: How?", seed=3)
        assert a == b and a != TEXT, name


def test_unknown_perturbation_is_refused():
    with pytest.raises(ValueError, match="choose from"):
        perturb("rot13", "x")


def test_aligned_tokens_share_a_column_up_to_case_and_an_inserted_run_faces_a_gap():
    original = ["Boil", " water", ",", " then", " wait", "."]
    perturbed = ["BO", "IL", " WATER", " then", " 🙂", " wait", "."]
    assert align_tokens(original, perturbed) == [(0, 0), (None, 1), (1, 2), (2, None), (3, 3), (None, 4), (4, 5), (5, 6)]
    assert align_tokens(["a", "b"], ["a", "b"]) == [(0, 0), (1, 1)]
    assert align_tokens([], ["x"]) == [(None, 0)]
