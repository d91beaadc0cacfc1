import json

from reform_engine.resume import Journal


def test_units_written_to_a_journal_are_read_back_by_the_same_job(tmp_path):
    journal = Journal(tmp_path / "j.jsonl", {"config": {"k": 5}, "pairs": ["a", "b"]})
    journal.add("lower:0", {"variants": [1, 2]})
    journal.add("lower:4", {"variants": []})
    again = Journal(tmp_path / "j.jsonl", {"pairs": ["a", "b"], "config": {"k": 5}})  # key order does not matter
    assert len(again) == 2 and "lower:0" in again and "raise:0" not in again
    assert again["lower:0"] == {"variants": [1, 2]} and again["lower:4"] == {"variants": []}


def test_another_jobs_journal_is_started_anew_and_its_units_are_not_read(tmp_path):
    Journal(tmp_path / "j.jsonl", {"config": {"k": 5}}).add("lower:0", {"variants": [1]})
    other = Journal(tmp_path / "j.jsonl", {"config": {"k": 6}})
    assert len(other) == 0
    assert Journal(tmp_path / "j.jsonl", {"config": {"k": 5}}).units == {}  # the old job's units went with it


def test_a_line_cut_short_by_a_kill_is_redone_with_everything_after_it(tmp_path):
    journal = Journal(tmp_path / "j.jsonl", {"config": 1})
    journal.add("a", 1)
    journal.add("b", 2)
    text = (tmp_path / "j.jsonl").read_text()
    (tmp_path / "j.jsonl").write_text(text[:-5])  # the kill came while "b" was being written
    again = Journal(tmp_path / "j.jsonl", {"config": 1})
    assert again.units == {"a": 1}
    again.add("b", 3)
    assert [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()][1:] == \
        [{"unit": "a", "value": 1}, {"unit": "b", "value": 3}]
    assert Journal(tmp_path / "j.jsonl", {"config": 1}).units == {"a": 1, "b": 3}


def test_a_removed_journal_leaves_nothing_and_a_missing_one_starts_empty(tmp_path):
    journal = Journal(tmp_path / "run" / "j.jsonl", {"config": 1})
    assert len(journal) == 0 and (tmp_path / "run" / "j.jsonl").is_file()
    journal.remove()
    assert not (tmp_path / "run" / "j.jsonl").exists()
    journal.remove()  # twice is fine


def test_a_snapshot_is_read_back_by_the_job_that_saved_it_and_by_no_other(tmp_path):
    import torch

    from reform_engine.resume import Snapshot

    Snapshot(tmp_path / "s.pt", {"config": {"lr": 1e-4}, "prompts": ["a"]}).save({"step": 3, "w": torch.ones(2)})
    state = Snapshot(tmp_path / "s.pt", {"prompts": ["a"], "config": {"lr": 1e-4}}).load()  # key order does not matter
    assert state["step"] == 3 and torch.equal(state["w"], torch.ones(2))
    other = Snapshot(tmp_path / "s.pt", {"config": {"lr": 5e-4}, "prompts": ["a"]})
    assert other.load() is None and other.why == "is another config's"
    missing = Snapshot(tmp_path / "none.pt", {})
    assert missing.load() is None and missing.why is None  # nothing to say: there was nothing to resume
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]  # saved through a temporary file, replaced whole


def test_a_snapshot_that_does_not_load_starts_the_job_over_and_a_removed_one_is_gone(tmp_path):
    from reform_engine.resume import Snapshot

    (tmp_path / "s.pt").write_bytes(b"cut short")
    snap = Snapshot(tmp_path / "s.pt", {"k": 1})
    assert snap.load() is None and snap.why.startswith("cannot be read (")
    snap.save({"step": 1})
    assert snap.load() == {"step": 1}
    snap.remove()
    assert not (tmp_path / "s.pt").exists() and snap.load() is None
    snap.remove()  # removing twice is harmless


def test_a_journal_and_a_snapshot_saved_before_a_setting_existed_still_resume_while_it_holds_its_default(tmp_path):
    import torch
    from dataclasses import dataclass

    from reform_engine.resume import Snapshot

    @dataclass
    class Before:
        k: int = 5

    @dataclass
    class After(Before):
        temperature: float = 0.0

    Journal(tmp_path / "j.jsonl", {"config": Before(), "pairs": ["a"]}).add("lower:0", 1)
    assert Journal(tmp_path / "j.jsonl", {"config": After(), "pairs": ["a"]}).units == {"lower:0": 1}
    assert Journal(tmp_path / "j.jsonl", {"config": After(temperature=1.0), "pairs": ["a"]}).units == {}
    Snapshot(tmp_path / "s.pt", Before()).save({"step": torch.tensor(3)})
    assert Snapshot(tmp_path / "s.pt", After()).load()["step"].item() == 3
    other = Snapshot(tmp_path / "s.pt", After(temperature=1.0))
    assert other.load() is None and other.why == "is another config's"
