import json

import pytest

from conftest import make_pair
from reform_engine.curation import counts, decision_for, export_approved, new_pair, queue, step_trace
from reform_engine.data import load_preferences
from reform_engine.decoding import DecodingResult, StepRecord
from reform_engine.influence import ScoredPair
from reform_engine.inversions import make_variant, verdict_flags
from reform_engine.store import Store


def variant(i: int, direction: str, r_variant: float, text: str, *, perplexity: float = 3.0, plain: float = float("nan")) -> dict:
    """A real Variant.to_record(): pair i (r+ = 2.0, r- = 0.5) with a two-step decoding ending in EOS;
    ``plain``: the plain policy's perplexity on its prompt (the fluency reference)."""
    source = ScoredPair(make_pair(i, f"Q{i}?", "Good answer.", "Bad answer."), 2.0, 0.5, 0.2, 1)
    steps = [StepRecord(s, [5, 2], ["Hi", "<eos>"], [-0.1, -2.0], [0.3, 0.1], [0.0, 0.0], c, [5, 2][c], ["Hi", ""][c],
                        [0.3, -0.4, -0.4][s], c == 1) for s, c in enumerate([0, 0, 1])]
    result = DecodingResult(source.pair.prompt, direction, "fast", [5, 5], text, steps, r_variant, perplexity, "eos")
    return make_variant(source, result, r_variant, plain).to_record()


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "reform.duckdb")
    job = s.add_job("variants", {})
    s.add_variants([variant(0, "lower", -1.0, "Looks fine."), variant(1, "lower", 1.0, "Not low enough.")], job_id=job)
    s.add_variants([variant(2, "raise", 0.0, "Sent by hand.")])  # from the decoding page: no job, not an inversion
    return s


def test_queue_holds_inversions_and_hand_sent_variants(store):
    assert queue(store)["text"].tolist() == ["Looks fine.", "Sent by hand."]
    assert queue(store, every_variant=True)["text"].tolist() == ["Looks fine.", "Not low enough.", "Sent by hand."]
    first = int(queue(store)["id"][0])
    store.decide(first, "approve", note="ok")
    assert queue(store)["text"].tolist() == ["Sent by hand."]
    assert queue(store, "approved")["id"].tolist() == [first]
    assert counts(store) == {"pending": 1, "approved": 1, "rejected": 0}


def test_a_batch_variant_past_its_threshold_but_not_fluent_is_not_queued_and_is_shown_flagged(tmp_path):
    s = Store(tmp_path / "reform.duckdb")
    job = s.add_job("variants", {})
    s.add_variants([variant(0, "lower", -1.0, "Hagai H.Pomoderitametakomoronit", perplexity=63.75, plain=2.5),
                    variant(1, "lower", -1.0, "A fine answer.", perplexity=6.0, plain=2.5)], job_id=job)
    assert queue(s)["text"].tolist() == ["A fine answer."]
    every = queue(s, every_variant=True)
    assert every[["text", "margin", "fluent", "is_inversion"]].values.tolist() == [
        ["Hagai H.Pomoderitametakomoronit", 1.5, False, False], ["A fine answer.", 1.5, True, True]]
    assert [verdict_flags(r) for r in every.to_dict("records")] == [["not fluent"], []]
    with pytest.raises(ValueError, match="not an inversion"):
        s.decide(int(every["id"][0]), "approve")


def test_hide_inappropriate_leaves_out_only_the_variants_judged_inappropriate(tmp_path):
    from reform_engine.appropriateness import judge_by_rules

    s = Store(tmp_path / "reform.duckdb")
    job = s.add_job("variants", {})
    texts = ["Here's how: use a flat bar.", "I can't help with that.", "Never checked."]
    records = [variant(i, "lower", -1.0, t) for i, t in enumerate(texts)]
    for r in records[:2]:
        verdict = judge_by_rules(r["text"])
        r["appropriate"], r["appropriateness"] = verdict.appropriate, verdict.reason
    s.add_variants(records, job_id=job)
    assert queue(s)["text"].tolist() == texts
    assert queue(s, hide_inappropriate=True)["text"].tolist() == texts[1:]
    assert ["inappropriate" in verdict_flags(r) for r in queue(s).to_dict("records")] == [True, False, False]


def test_decision_for_an_edited_text():
    assert decision_for("Looks fine.", " Looks fine.\n") == ("approve", None)
    assert decision_for("Looks fine.", "Looks fine, really.") == ("edit", "Looks fine, really.")


def test_step_trace_and_new_pair_of_a_stored_variant(store):
    first, _, hand = [int(i) for i in queue(store, None, every_variant=True)["id"]]
    v = store.get_variant(first)
    assert step_trace(v["steps"]) == (["Hi", "Hi"], [0.3, -0.4])
    assert step_trace(None) == ([], [])
    assert new_pair(v) == ("Looks fine.", "Bad answer.")
    assert new_pair(store.get_variant(hand)) == ("Good answer.", "Sent by hand.")
    store.decide(first, "edit", "Looks fine, edited.")
    assert new_pair(store.get_variant(first)) == ("Looks fine, edited.", "Bad answer.")


def test_the_pair_shown_for_a_variant_is_the_pair_it_exports(tmp_path):
    s = Store(tmp_path / "padded.duckdb")
    (vid,) = s.add_variants([variant(0, "lower", -1.0, "  Looks fine.\n")])
    s.decide(vid, "approve")
    exported = s.approved_pairs()[0]
    assert new_pair(s.get_variant(vid)) == (exported.chosen, exported.rejected) == ("Looks fine.", "Bad answer.")


def test_export_approved_writes_trl_rows_and_refuses_an_empty_export(store, tmp_path):
    with pytest.raises(ValueError, match="no approved pairs"):
        export_approved(store, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*"))
    store.decide(int(queue(store)["id"][0]), "edit", "Looks fine, edited.", note="clearer")
    path, n = export_approved(store, tmp_path / "out")
    assert n == 1 and path.parent == tmp_path / "out" and path.suffix == ".jsonl"
    assert json.loads(path.read_text()) == {"prompt": [{"role": "user", "content": "Q0?"}], "chosen": "Looks fine, edited.",
                                            "rejected": "Bad answer."}
    parquet, n = export_approved(store, tmp_path / "out", fmt="parquet")
    assert n == 1 and load_preferences(str(parquet)).pairs[0].chosen == "Looks fine, edited."
    with pytest.raises(ValueError, match="format 'csv'"):
        export_approved(store, tmp_path / "out", fmt="csv")
