"""benchmarks/keep_runs.py: what is kept of a run directory, and that restoring gives the files back."""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import keep_runs  # noqa: E402


def _status(d: Path, state: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "status.json").write_text(json.dumps({"state": state}))


def _staged_run(out: Path) -> Path:
    run = out / "plan" / "pipeline"
    _status(run, "running")
    (run / "config.json").write_text("{}")
    _status(run / "influence", "succeeded")
    (run / "influence" / "stage.json").write_text("{}")
    big = "".join(json.dumps({"i": i, "pad": "x" * 200}) + "\n" for i in range(6000))  # > 1 MB
    (run / "influence" / "scored.jsonl").write_text(big)
    _status(run / "attack_r1", "succeeded")
    (run / "attack_r1" / "checkpoint").mkdir()
    (run / "attack_r1" / "checkpoint" / "adapter.safetensors").write_bytes(b"\0" * 10)
    (run / "attack_r1" / "checkpoint" / "top_layers.safetensors").write_bytes(b"\0" * 10)  # finetune=top: too big to keep
    _status(run / "attack_r2", "running")  # killed mid-way: its resume state stays behind
    (run / "attack_r2" / "rl_state.pt").write_bytes(b"\0" * 10)
    (run / "trunk_cache").mkdir()
    (run / "trunk_cache" / "shard.bin").write_bytes(b"\0")
    (run / "bon_samples").mkdir()  # best-of-N's samples with hidden states: a cache, drawn again when needed
    (run / "bon_samples" / "0084d23c.pt").write_bytes(b"\0")
    return run


def test_a_staged_run_keeps_its_own_files_and_finished_stages_only(tmp_path):
    out, kept = tmp_path / "out", tmp_path / "kept"
    _staged_run(out)
    assert keep_runs.keep("plan/pipeline", out, kept) == ["attack_r1", "influence"]
    files = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    assert files == ["plan/pipeline/attack_r1/checkpoint/adapter.safetensors", "plan/pipeline/attack_r1/status.json",
                     "plan/pipeline/config.json", "plan/pipeline/influence/scored.jsonl.gz",
                     "plan/pipeline/influence/stage.json", "plan/pipeline/influence/status.json",
                     "plan/pipeline/status.json"]


def test_restore_gives_back_the_same_bytes_and_never_overwrites(tmp_path):
    out, kept, fresh = tmp_path / "out", tmp_path / "kept", tmp_path / "fresh"
    run = _staged_run(out)
    keep_runs.keep("plan/pipeline", out, kept)
    (fresh / "plan" / "pipeline").mkdir(parents=True)
    (fresh / "plan" / "pipeline" / "config.json").write_text('{"mine": 1}')  # already there: stays
    assert keep_runs.restore(fresh, kept) == 6
    again = fresh / "plan" / "pipeline"
    assert (again / "influence" / "scored.jsonl").read_bytes() == (run / "influence" / "scored.jsonl").read_bytes()
    assert not (again / "influence" / "scored.jsonl.gz").exists()
    assert json.loads((again / "config.json").read_text()) == {"mine": 1}
    assert not (again / "attack_r2").exists() and not (again / "trunk_cache").exists()
    assert keep_runs.restore(fresh, kept) == 0


def test_a_single_job_is_kept_whole_when_it_succeeded_and_not_at_all_before(tmp_path):
    out, kept = tmp_path / "out", tmp_path / "kept"
    job = out / "plan" / "base"
    _status(job, "running")
    (job / "resume.pt").write_bytes(b"\0")
    assert keep_runs.keep("plan/base", out, kept) == [] and not kept.exists()
    _status(job, "succeeded")
    (job / "resume.pt").unlink()
    (job / "checkpoint").mkdir()
    (job / "checkpoint" / "head.safetensors").write_bytes(b"\1")
    assert keep_runs.keep("plan/base", out, kept) == ["plan/base"]
    assert (kept / "plan" / "base" / "checkpoint" / "head.safetensors").read_bytes() == b"\1"


def test_the_gzip_is_the_same_bytes_each_time(tmp_path):
    """Keeping an unchanged stage again must not make a new blob in git."""
    out = tmp_path / "out"
    _staged_run(out)
    keep_runs.keep("plan/pipeline", out, tmp_path / "a")
    keep_runs.keep("plan/pipeline", out, tmp_path / "b")
    rel = Path("plan/pipeline/influence/scored.jsonl.gz")
    assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert gzip.decompress((tmp_path / "a" / rel).read_bytes()).count(b"\n") == 6000
