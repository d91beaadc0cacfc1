import math

import pytest

from conftest import make_pair
from reform_engine.decoding import DecodingResult, StepRecord
from reform_engine.influence import ScoredPair
from reform_engine.inversions import make_variant
from reform_engine.proxy import partial_reward_proxy, pearson, proxy_by_step, spearman, token_trace
from reform_engine.store import Store, StoreError


def test_a_partial_reward_that_moves_with_the_final_one_correlates_one_and_against_it_minus_one():
    finals = [1.0, 2.0, 3.0, 4.0, 5.0]
    with_it = [[f, 2 * f + 1] for f in finals]           # step 1: the final itself, step 2: a linear map of it
    against = [[-f, 10.0 - f ** 3] for f in finals]       # step 1: linear and falling, step 2: monotone falling, not linear
    up = proxy_by_step(with_it, finals, min_n=5)
    down = proxy_by_step(against, finals, min_n=5)
    assert up["step"].tolist() == [1, 2] and up["n"].tolist() == [5, 5] and up["enough"].tolist() == [True, True]
    assert up["pearson"].tolist() == pytest.approx([1.0, 1.0]) and up["spearman"].tolist() == pytest.approx([1.0, 1.0])
    assert down["pearson"][0] == pytest.approx(-1.0) and -1.0 < down["pearson"][1] < -0.9
    assert down["spearman"].tolist() == pytest.approx([-1.0, -1.0])


def test_a_step_too_few_variants_reached_keeps_its_n_but_gets_no_correlation():
    traces = [[0.1, 0.2, 0.3], [0.2, 0.1], [0.3, 0.5], [0.0]]
    table = proxy_by_step(traces, [0.3, 0.1, 0.5, 0.0], min_n=3)
    assert table["n"].tolist() == [4, 3, 1] and table["enough"].tolist() == [True, True, False]
    assert math.isnan(table["pearson"][2]) and math.isnan(table["spearman"][2])
    # step 1: partials 0.1 0.2 0.3 0.0 against finals 0.3 0.1 0.5 0.0 -> ranks (2, 3, 4, 1) vs (3, 2, 4, 1): rho 0.8
    assert table["spearman"][0] == pytest.approx(0.8)
    assert table["pearson"][1] == pytest.approx(pearson([0.2, 0.1, 0.5], [0.3, 0.1, 0.5]))


def test_variants_without_a_final_reward_and_missing_partials_are_left_out():
    table = proxy_by_step([[1.0, float("nan")], [2.0, 2.0], [5.0, 1.0]], [1.0, 2.0, float("nan")], min_n=2)
    assert table["n"].tolist() == [2, 1] and table["pearson"][0] == pytest.approx(1.0)


def test_constant_sides_and_bad_arguments():
    assert math.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])) and math.isnan(spearman([1.0], [2.0]))
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties share their average rank
    assert proxy_by_step([], []).empty
    with pytest.raises(ValueError, match="one final reward per trace"):
        proxy_by_step([[1.0]], [])
    with pytest.raises(ValueError, match="min_n >= 2"):
        proxy_by_step([[1.0]], [1.0], min_n=1)


def test_the_eos_step_is_no_token_of_the_response():
    assert token_trace([0.1, 0.4, 0.4], True) == [0.1, 0.4] and token_trace([0.1, 0.4], False) == [0.1, 0.4]
    assert token_trace([], True) == []


def variant(i: int, direction: str, running: list[float], r_variant: float, eos: bool) -> dict:
    """A real Variant.to_record() whose decoding had these running rewards (and an EOS step at the end)."""
    source = ScoredPair(make_pair(i, f"Q{i}?", "Good answer.", "Bad answer."), 2.0, 0.5, 0.2, 1)
    steps = [StepRecord(s, [5, 2], ["Hi", "<eos>"], [-0.1, -2.0], [r, 0.1], [0.0, 0.0], 0, 5, "Hi", r, False)
             for s, r in enumerate(running)]
    if eos:
        steps.append(StepRecord(len(running), [2, 5], ["<eos>", "Hi"], [-0.1, -2.0], [running[-1], 0.1], [0.0, 0.0], 0, 2, "",
                                running[-1], True))
    result = DecodingResult(source.pair.prompt, direction, "fast", [5] * len(running), f"text {i}", steps, running[-1], 3.0,
                            "eos" if eos else "max_new_tokens")
    return make_variant(source, result, r_variant).to_record()


def test_the_proxy_reads_every_decoded_variant_of_the_store_and_drops_their_eos_steps(tmp_path):
    store = Store(tmp_path / "reform.duckdb")
    job = store.add_job("variants", {})
    store.add_variants([variant(0, "lower", [0.0, 1.0], 1.0, True), variant(1, "lower", [1.0, 2.0], 2.0, True),
                        variant(2, "raise", [2.0, 3.0], 3.0, False)], job_id=job)
    rows = store.variant_traces()
    assert rows["trace"].tolist() == [[0.0, 1.0, 1.0], [1.0, 2.0, 2.0], [2.0, 3.0]]
    assert rows["ends_in_eos"].tolist() == [True, True, False] and rows["direction"].tolist() == ["lower", "lower", "raise"]
    table = partial_reward_proxy(store, min_n=2)
    assert table["step"].tolist() == [1, 2] and table["n"].tolist() == [3, 3]  # no step 3: the EOS steps add no token
    assert table["pearson"].tolist() == pytest.approx([1.0, 1.0])
    assert partial_reward_proxy(store, ("raise",), min_n=2)["n"].tolist() == [1, 1]
    with pytest.raises(StoreError, match="not variant directions"):
        store.variant_traces(("sideways",))
