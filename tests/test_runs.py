import os

import pytest

from reform_engine.runs import RunDir, atomic_directory, atomic_write_json, read_json


def test_atomic_write_json_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert read_json(tmp_path / "a.json") == {"x": 2}
    assert os.listdir(tmp_path) == ["a.json"]


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
