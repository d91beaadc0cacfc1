import errno
import os

import pytest
import torch

from reform_engine import runs
from dataclasses import dataclass, field

from reform_engine.runs import RunDir, atomic_directory, atomic_write_json, job, job_run, read_json, recover_directory
from reform_engine.runtime import Runtime


def test_atomic_write_json_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert read_json(tmp_path / "a.json") == {"x": 2}
    assert os.listdir(tmp_path) == ["a.json"]


def test_a_torch_state_is_read_back_and_a_torn_or_missing_one_is_a_miss_that_says_why(tmp_path):
    state = {"weights": torch.arange(6.0).reshape(2, 3), "losses": [0.7, 0.6], "rng": torch.Generator().get_state()}
    runs.atomic_torch_save(tmp_path / "s.pt", state)
    back, why = runs.read_torch(tmp_path / "s.pt")
    assert why is None and torch.equal(back["weights"], state["weights"]) and back["losses"] == [0.7, 0.6]
    assert torch.equal(back["rng"], state["rng"])
    assert os.listdir(tmp_path) == ["s.pt"]  # no temp file left behind
    whole = (tmp_path / "s.pt").read_bytes()
    (tmp_path / "s.pt").write_bytes(whole[: len(whole) // 2])  # what a kill mid-write by plain torch.save leaves
    back, why = runs.read_torch(tmp_path / "s.pt")
    assert back is None and why
    assert runs.read_torch(tmp_path / "none.pt") == (None, "no file")


def test_atomic_directory_keeps_previous_version_when_the_writer_fails(tmp_path):
    with atomic_directory(tmp_path / "ckpt") as d:
        (d / "w.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "ckpt") as d:
            (d / "w.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert (tmp_path / "ckpt" / "w.txt").read_text() == "v1"
    with atomic_directory(tmp_path / "ckpt") as d:
        (d / "w.txt").write_text("v2")
    assert (tmp_path / "ckpt" / "w.txt").read_text() == "v2"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_run_dir_status_progress_and_bad_state(tmp_path):
    run = RunDir(tmp_path)
    run.progress(3, 12, loss=0.5)
    status = RunDir(tmp_path).status()
    assert (status["state"], status["step"], status["total"], status["progress"], status["loss"]) == ("running", 3, 12, 0.25, 0.5)
    assert status["pid"] == os.getpid()
    with pytest.raises(ValueError, match="use one of"):
        run.set_status("exploded")


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_kill_between_the_two_renames_leaves_the_previous_version_for_the_next_save(tmp_path):
    with atomic_directory(tmp_path / "ckpt") as d:
        (d / "w.txt").write_text("v1")
    os.replace(tmp_path / "ckpt", tmp_path / ".ckpt.old")  # the state a SIGKILL between the renames leaves
    (tmp_path / ".ckpt.123.tmp").mkdir()                     # with the new version's temp directory beside it
    with pytest.raises(OSError):
        with atomic_directory(tmp_path / "ckpt") as d:
            full_disk()  # the next save fails too: the previous version must still be there afterwards
    assert (tmp_path / "ckpt" / "w.txt").read_text() == "v1"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    with atomic_directory(tmp_path / "ckpt") as d:
        (d / "w.txt").write_text("v2")
    assert (tmp_path / "ckpt" / "w.txt").read_text() == "v2" and sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_recover_directory_restores_old_and_drops_litter(tmp_path):
    (tmp_path / ".ckpt.old").mkdir()
    (tmp_path / ".ckpt.old" / "w.txt").write_text("v1")
    assert recover_directory(tmp_path / "ckpt") is True
    assert (tmp_path / "ckpt" / "w.txt").read_text() == "v1" and sorted(os.listdir(tmp_path)) == ["ckpt"]
    (tmp_path / ".ckpt.old").mkdir()  # the swap finished but its clean-up was cut short
    assert recover_directory(tmp_path / "ckpt") is False
    assert sorted(os.listdir(tmp_path)) == ["ckpt"] and (tmp_path / "ckpt" / "w.txt").read_text() == "v1"
    assert recover_directory(tmp_path / "nothing") is False


def test_loading_a_checkpoint_cut_between_its_renames_recovers_it(tmp_path, tiny_rm, toy_pairs):
    from reform_engine.reward_model import load_reward_model
    from reform_engine.scoring import score_pairs

    tiny_rm.save(tmp_path / "checkpoint")
    expected = score_pairs(tiny_rm, toy_pairs[:2]).r_chosen
    os.replace(tmp_path / "checkpoint", tmp_path / ".checkpoint.old")
    rm = load_reward_model(str(tmp_path / "checkpoint"), device="cpu")
    assert torch.allclose(score_pairs(rm, toy_pairs[:2]).r_chosen, expected)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]


def test_a_swapped_in_directory_is_flushed_file_by_file_and_in_its_parent(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with atomic_directory(tmp_path / "ckpt") as d:
        (d / "sub").mkdir()
        (d / "a.bin").write_bytes(b"a")
        (d / "sub" / "b.bin").write_bytes(b"b")
    tmp = str(d)
    # bottom-up, so a directory is flushed after what it holds; then the parent, which holds the renames
    assert synced == [f"{tmp}/sub/b.bin", f"{tmp}/sub", f"{tmp}/a.bin", tmp, str(tmp_path)]


def test_a_full_disk_still_marks_the_job_failed_with_its_error(tmp_path, monkeypatch):
    with pytest.raises(OSError, match="No space left on device"):
        with job_run(tmp_path / "run", {"lr": 0.1}) as run:
            run.progress(1, 4, message="step 1/4")
            run.log("step 1")
            monkeypatch.setattr(runs, "atomic_write_bytes", full_disk)  # the disk fills up: no new file fits
            with atomic_directory(run.checkpoint_path):
                full_disk()  # the checkpoint write is what hits it
    status = read_json(tmp_path / "run" / "status.json")
    assert (status["state"], status["message"], status["step"]) == ("failed", "OSError: [Errno 28] No space left on device", 1)
    assert (tmp_path / "run" / "log.txt").read_text().splitlines()[-1].endswith("failed: OSError: [Errno 28] No space left on device")


def test_a_disk_that_refuses_even_the_status_does_not_hide_the_jobs_error(tmp_path, monkeypatch, capfd):
    with pytest.raises(ZeroDivisionError):
        with job_run(tmp_path / "run", {}) as run:
            monkeypatch.setattr(runs, "atomic_write_bytes", full_disk)
            monkeypatch.setattr(runs, "overwrite_in_place", full_disk)
            monkeypatch.setattr(run, "log", full_disk)
            1 / 0
    assert read_json(tmp_path / "run" / "status.json")["state"] == "running"  # nothing could say otherwise here
    assert "status.json not updated ([Errno 28] No space left on device); the job failed with ZeroDivisionError" in capfd.readouterr().err


@dataclass
class CountConfig:
    text: str
    runtime: Runtime = field(default_factory=lambda: Runtime(threads=1))


@job("counting", done=lambda result: f"{result['words']} words")
def count_words(config: CountConfig, run: RunDir) -> dict:
    """A job reads as its algorithm: the frame does the rest."""
    run.progress(1, 2, message="half way")
    return {"words": len(config.text.split()), "threads": torch.get_num_threads()}


def test_the_job_frame_caps_threads_writes_metrics_and_marks_success(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        result = count_words(CountConfig("one two three"), tmp_path / "run")
    finally:
        torch.set_num_threads(before)
    assert result == {"words": 3, "threads": 1}
    assert read_json(tmp_path / "run" / "metrics.json") == result
    assert read_json(tmp_path / "run" / "config.json") == {"text": "one two three", "runtime": {
        "device": "auto", "dtype": "float32", "threads": 1, "seed": 0, "trust_remote_code": False, "trunk_cache": "auto",
        "trunk_cache_gb": 4.0}}
    status = read_json(tmp_path / "run" / "status.json")
    assert (status["state"], status["message"], status["progress"], status["step"], status["total"]) == (
        "succeeded", "3 words", 1.0, 2, 2)
    assert count_words.__name__ == "count_words" and "algorithm" in count_words.__doc__


def test_only_the_main_process_of_a_launch_writes_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert count_words(CountConfig("a b"), tmp_path / "run")["words"] == 2
    assert not (tmp_path / "run").exists()
