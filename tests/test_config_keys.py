from dataclasses import dataclass, field

from reform_engine.config_keys import comparable, known_to, same_job
from reform_engine.runtime import Runtime


@dataclass
class Inner:
    k: int = 5


@dataclass
class Job:
    text: str
    inner: Inner = field(default_factory=Inner)
    runtime: Runtime = field(default_factory=Runtime)


@dataclass
class JobLater(Job):
    """Job after the engine gained a setting."""
    temperature: float = 0.0


def test_placement_may_differ_and_the_seed_may_not():
    saved = comparable(Job("a", runtime=Runtime(threads=2, device="cpu")))
    assert "threads" not in saved["runtime"] and "seed" in saved["runtime"]
    assert same_job(saved, Job("a", runtime=Runtime(threads=1, device="cuda")))
    assert not same_job(saved, Job("a", runtime=Runtime(seed=1)))
    assert not same_job(saved, Job("b")) and not same_job(saved, Job("a", inner=Inner(6)))


def test_a_setting_added_since_counts_as_equal_only_at_its_default_at_any_depth():
    saved = comparable(Job("a"))
    assert same_job(saved, JobLater("a")) and not same_job(saved, JobLater("a", temperature=1.0))
    del saved["inner"]["k"]  # a nested config's setting, added since
    assert same_job(saved, JobLater("a")) and not same_job(saved, JobLater("a", inner=Inner(6)))
    assert known_to(saved, JobLater("a"))["inner"] == {}
    key = {"config": comparable(Job("a")), "pairs": ["p1", "p2"]}  # a resume key: configs inside plain containers
    assert same_job(key, {"config": JobLater("a"), "pairs": ["p1", "p2"]})
    assert not same_job(key, {"config": JobLater("a"), "pairs": ["p1"]})
    assert not same_job(key, {"config": JobLater("a"), "pairs": ["p1", "p2"], "more": 1})


def test_a_setting_the_engine_no_longer_has_makes_it_another_job():
    saved = {**comparable(Job("a")), "retired": True}
    assert not same_job(saved, Job("a"))


def test_one_existing_file_named_relative_or_absolute_is_one_input_and_two_files_are_two(tmp_path, monkeypatch):
    (tmp_path / "pairs.jsonl").write_text("{}\n")
    (tmp_path / "other.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    saved = comparable(Job(str(tmp_path / "pairs.jsonl")))
    assert same_job(saved, Job("pairs.jsonl"))
    assert same_job(saved, Job("./pairs.jsonl"))
    assert not same_job(saved, Job("other.jsonl"))
    assert not same_job(comparable(Job(str(tmp_path / "gone.jsonl"))), Job("gone.jsonl"))  # nothing there to be one
    assert not same_job(comparable(Job("")), Job(" "))
