import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field

import torch

from reform_engine import cpu_share, jobs
from reform_engine.cpu_share import ThreadGovernor, claim, claimed_threads, job_threads
from reform_engine.runs import job_run
from reform_engine.runtime import Runtime


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def hold_claim_in_child(directory, threads: int) -> subprocess.Popen:
    """Another process (as the app's server is) holding a claim until its stdin closes."""
    code = ("import sys; from pathlib import Path; from reform_engine.cpu_share import claim\n"
            f"with claim({threads}, Path({str(directory)!r})):\n    print('held', flush=True); sys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(cpu_share.__file__))))
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_claim_counts_its_threads_while_held_and_nothing_after(tmp_path):
    with claim(1, tmp_path) as held:
        assert claimed_threads(tmp_path) == 1
        held.update(2)
        assert claimed_threads(tmp_path) == 2
        assert claimed_threads(tmp_path, exclude_pid=os.getpid()) == 0
    assert claimed_threads(tmp_path) == 0
    assert list(tmp_path.iterdir()) == []


def test_the_claim_of_a_dead_process_is_not_counted_and_is_removed(tmp_path):
    stale = tmp_path / "1-dead.json"
    stale.write_text(json.dumps({"pid": dead_pid(), "proc_start": None, "threads": 2}))
    (tmp_path / "2-half.json").write_text("{")   # being written: skipped, kept for the next look
    assert claimed_threads(tmp_path) == 0
    assert not stale.exists()
    assert (tmp_path / "2-half.json").exists()


def test_a_claim_that_cannot_be_written_does_not_stop_the_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with claim(1, blocker / "claims") as held:
        assert held.threads == 0
    assert claimed_threads(blocker / "claims") == 0


def test_a_job_takes_the_cores_the_claims_leave():
    assert job_threads(full=2, cores=2, claimed=0) == 2
    assert job_threads(full=2, cores=2, claimed=1) == 1
    assert job_threads(full=2, cores=2, claimed=2) == 1
    assert job_threads(full=4, cores=8, claimed=2) == 4
    assert job_threads(full=8, cores=8, claimed=3) == 5


def test_the_governor_yields_to_another_process_claim_and_takes_its_threads_back(tmp_path):
    clock, seen = Clock(), []
    governor = ThreadGovernor(full=2, cores=2, directory=tmp_path, check_every=0.25, clock=clock, set_threads=seen.append)
    assert governor.check() == 2 and seen == []
    child = hold_claim_in_child(tmp_path, 1)
    try:
        clock.now = 0.1
        assert governor.check() == 2          # looked 0.1 s ago: not again yet
        clock.now = 0.5
        assert governor.check() == 1
    finally:
        child.stdin.close()
        child.wait()
    clock.now = 1.0
    assert governor.check() == 2
    assert seen == [1, 2] and governor.changes == [1, 2]


def test_the_governor_ignores_this_process_own_claims(tmp_path):
    clock, seen = Clock(), []
    governor = ThreadGovernor(full=2, cores=2, directory=tmp_path, clock=clock, set_threads=seen.append)
    with claim(1, tmp_path):
        clock.now = 1.0
        assert governor.check() == 2
    assert seen == []


def test_the_governor_acts_only_in_the_thread_that_made_it(tmp_path):
    clock, seen = Clock(), []
    governor = ThreadGovernor(full=2, cores=2, directory=tmp_path, clock=clock, set_threads=seen.append)
    child = hold_claim_in_child(tmp_path, 1)
    try:
        clock.now = 1.0
        other = threading.Thread(target=governor.check)
        other.start()
        other.join()
        assert seen == []
        assert governor.check() == 1 and seen == [1]
    finally:
        child.stdin.close()
        child.wait()


def test_installed_the_governor_looks_before_each_forward_and_restores_threads_when_removed(tmp_path):
    clock, seen = Clock(), []
    governor = ThreadGovernor(full=2, cores=2, directory=tmp_path, clock=clock, set_threads=seen.append).install()
    child = hold_claim_in_child(tmp_path, 1)
    try:
        clock.now = 1.0
        out = torch.nn.Linear(2, 1)(torch.ones(1, 2))
        assert out.shape == (1, 1)            # the hook left the inputs alone
        assert seen == [1]
    finally:
        child.stdin.close()
        child.wait()
        governor.remove()
    assert seen == [1, 2]
    clock.now = 2.0
    torch.nn.Linear(2, 1)(torch.ones(1, 2))
    assert seen == [1, 2]                     # removed: no more looks


def forward_until(layer, done, passes: int = 400) -> None:
    """Run forwards, each after the governor's last look has gone stale, until ``done()`` (or give up)."""
    for _ in range(passes):
        if done():
            return
        threading.Event().wait(cpu_share.CHECK_SECONDS / 2)
        layer(torch.ones(1, 2))


@dataclass
class _Config:
    runtime: Runtime = field(default_factory=lambda: Runtime(device="cpu", threads=2))


def test_a_job_on_the_cpu_drops_to_one_thread_while_the_app_claims_one_of_two_cores(tmp_path, monkeypatch):
    claims = tmp_path / "claims"
    monkeypatch.setenv(cpu_share.CPU_DIR_ENV, str(claims))
    monkeypatch.setattr(jobs, "cpu_cores", lambda: 2)
    before = torch.get_num_threads()
    seen = []
    try:
        with job_run(tmp_path / "run", _Config()):
            layer = torch.nn.Linear(2, 1)
            layer(torch.ones(1, 2))
            seen.append(torch.get_num_threads())
            child = hold_claim_in_child(claims, 1)
            try:
                forward_until(layer, lambda: torch.get_num_threads() == 1)
                seen.append(torch.get_num_threads())
            finally:
                child.stdin.close()
                child.wait()
            forward_until(layer, lambda: torch.get_num_threads() == 2)
            seen.append(torch.get_num_threads())
        log = (tmp_path / "run" / "log.txt").read_text()
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 1, 2]
    assert "threads changed 2 times" in log


def test_the_app_claims_the_threads_of_its_model_work_for_as_long_as_it_runs(tmp_path, monkeypatch):
    from pages._cpu import cpu_work

    monkeypatch.setenv(cpu_share.CPU_DIR_ENV, str(tmp_path))
    with cpu_work() as held:
        assert held.threads == torch.get_num_threads()
        assert claimed_threads(tmp_path) == held.threads
    assert claimed_threads(tmp_path) == 0


def test_each_decode_of_the_decoding_page_runs_under_a_claim(tmp_path, monkeypatch, tiny_model_dir):
    from pages._loading import _SharingDecoder
    from reform_engine.decoding import ControlledDecoder, DecodingConfig
    from reform_engine.models import load_causal_lm, load_tokenizer
    from reform_engine.reward_model import RewardModelSpec, build_reward_model

    monkeypatch.setenv(cpu_share.CPU_DIR_ENV, str(tmp_path))
    model, tokenizer = load_causal_lm(tiny_model_dir, device="cpu"), load_tokenizer(tiny_model_dir)
    rm = build_reward_model(RewardModelSpec(base_model=tiny_model_dir, finetune="full", max_length=256), device="cpu", seed=0)
    claimed = []
    decoder = _SharingDecoder(ControlledDecoder(model, tokenizer, rm.eval()))
    decoder.decode([[{"role": "user", "content": "Hi"}]], DecodingConfig(k=2, max_new_tokens=2),
                   on_event=lambda event: claimed.append(claimed_threads(tmp_path)), seed=0)
    assert claimed and all(n == torch.get_num_threads() for n in claimed)
    assert claimed_threads(tmp_path) == 0
    assert decoder.rm is rm
