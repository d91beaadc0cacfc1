import json
import multiprocessing
import os
import signal
import threading

import duckdb
import pytest

from reform_engine.data import PreferencePair, load_preferences, write_jsonl
from reform_engine.store import MAX_TEXT, SCHEMA_VERSION, Store, StoreError, default_store_path


def variant_record(i: int, direction: str = "lower", inversion: bool = True, text: str | None = None) -> dict:
    """A record shaped like inversions.Variant.to_record()."""
    steps = [{"step": s, "candidate_ids": [5, 6], "candidate_pieces": ["a", "b"], "logprobs": [-0.5, -1.0],
              "rewards": [0.1 * s, 0.2], "scores": [0.0, 0.0], "chosen": 0, "token_id": 5, "piece": "a",
              "running_reward": 0.25 * s, "is_eos": False} for s in range(3)]
    return {"pair_id": f"toy:{i}", "direction": direction, "prompt": [{"role": "user", "content": f"question {i}"}],
            "original_chosen": f"good answer {i}", "original_rejected": f"bad answer {i}",
            "text": text if text is not None else f"variant {i} {direction}", "r_variant": -1.5, "r_trace": -1.5,
            "r_chosen": 1.0, "r_rejected": -0.5, "margin": 1.0 if inversion else -1.0, "perplexity": 3.5,
            "is_inversion": inversion, "steps": steps, "new_pair": None}


def table_counts(path) -> dict:
    """Row counts read with a raw connection, to see that a refused call changed nothing."""
    con = duckdb.connect(str(path))
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("jobs", "variants", "decisions")}
    finally:
        con.close()


def schema_version(path) -> int:
    con = duckdb.connect(str(path))
    try:
        return con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    finally:
        con.close()


@pytest.fixture()
def store(tmp_path):
    return Store(tmp_path / "reform.duckdb")


def test_default_path_comes_from_the_project_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("REFORM_PROJECT_DIR", str(tmp_path / "proj"))
    assert default_store_path() == tmp_path / "proj" / "reform.duckdb"
    assert Store().path == (tmp_path / "proj" / "reform.duckdb").resolve()
    monkeypatch.delenv("REFORM_PROJECT_DIR")
    assert str(default_store_path()) == os.path.join("project_data", "reform.duckdb")


def test_schema_is_created_once_and_migrated_forward(tmp_path, monkeypatch):
    path = tmp_path / "r.duckdb"
    Store(path)
    assert schema_version(path) == SCHEMA_VERSION == 3
    Store(path)
    assert schema_version(path) == 3  # reopening does not re-run migrations
    import reform_engine.store as store_module
    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS + [["ALTER TABLE jobs ADD COLUMN priority INTEGER"]])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 4)
    migrated = Store(path)
    assert schema_version(path) == 4
    assert "priority" in migrated.list_jobs().columns
    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:3])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 3)
    with pytest.raises(StoreError, match="schema version 4; this code knows up to 3"):
        Store(path)


def test_a_first_version_database_loses_its_unused_datasets_table_and_keeps_the_rest(tmp_path):
    import reform_engine.store as store_module

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))  # a database as the first schema left it, with a row in every table
    for sql in store_module.MIGRATIONS[0]:
        con.execute(sql)
    con.execute("INSERT INTO schema_version VALUES (1, now())")
    con.execute("INSERT INTO datasets (name, source, n_pairs, created_at) VALUES ('demo', 'data/demo_pairs.jsonl', 165, now())")
    con.execute("INSERT INTO jobs (kind, config, state, created_at, updated_at) VALUES ('train-rm', '{}', 'succeeded', now(), now())")
    con.close()
    store = Store(path)
    assert schema_version(path) == SCHEMA_VERSION
    assert store.list_jobs()[["id", "kind", "state"]].values.tolist() == [[1, "train-rm", "succeeded"]]
    con = duckdb.connect(str(path))
    try:
        assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'datasets'").fetchone()[0] == 0
    finally:
        con.close()


def test_a_second_version_database_loses_its_copies_of_results_and_keeps_jobs_variants_and_decisions(tmp_path):
    import reform_engine.store as store_module

    path = tmp_path / "v2.duckdb"
    con = duckdb.connect(str(path))  # a database as the second schema left it, with a row in every table
    for sql in store_module.MIGRATIONS[0] + store_module.MIGRATIONS[1]:
        con.execute(sql)
    con.execute("INSERT INTO schema_version VALUES (1, now()), (2, now())")
    con.execute("INSERT INTO jobs (kind, config, state, created_at, updated_at) VALUES ('train-rm', '{}', 'succeeded', now(), now())")
    con.execute("INSERT INTO checkpoints (path, label, base_model, job_id, created_at) VALUES ('runs/1/checkpoint', 'x', 'tiny', 1, now())")
    con.execute("INSERT INTO eval_results (label, job_id, metrics, created_at) VALUES ('x', 1, '{}', now())")
    con.execute("INSERT INTO variants (key, pair_id, direction, prompt, original_chosen, original_rejected, text, is_inversion, "
                "steps, trace, created_at) VALUES ('k', 'toy:0', 'lower', '[{\"role\": \"user\", \"content\": \"q\"}]', "
                "'good', 'bad', 'worse', TRUE, '[]', '[]', now())")
    con.execute("INSERT INTO decisions (variant_id, decision, note, decided_at) VALUES (1, 'approve', 'ok', now())")
    con.close()
    store = Store(path)
    assert schema_version(path) == 3
    assert store.list_jobs()[["id", "kind"]].values.tolist() == [[1, "train-rm"]]
    assert store.list_variants()[["pair_id", "status", "note"]].values.tolist() == [["toy:0", "approved", "ok"]]
    con = duckdb.connect(str(path))
    try:
        left = con.execute("SELECT table_name FROM information_schema.tables ORDER BY table_name").fetchall()
        sequences = con.execute("SELECT sequence_name FROM duckdb_sequences() ORDER BY sequence_name").fetchall()
    finally:
        con.close()
    assert [t for (t,) in left] == ["decisions", "jobs", "schema_version", "variants"]
    assert [s for (s,) in sequences] == ["decisions_id", "jobs_id", "variants_id"]


def test_a_job_row_keeps_its_config_state_and_times(store, tmp_path):
    job = store.add_job("train-rm", {"lr": 0.0002, "data": "demo"}, str(tmp_path / "run"))
    assert store.get_job(job)["state"] == "pending" and store.get_job(job)["config"] == {"lr": 0.0002, "data": "demo"}
    running = store.update_job(job, state="running", progress=0.25, step=1, total=4, pid=4242, message="step 1/4")
    assert (running["state"], running["progress"], running["step"], running["pid"]) == ("running", 0.25, 1, 4242)
    assert running["started_at"] is not None and running["finished_at"] is None
    done = store.update_job(job, state="succeeded", progress=1.0)
    assert done["finished_at"] is not None and done["started_at"] == running["started_at"]
    assert store.list_jobs(kind="variants").empty and store.list_jobs()["id"].tolist() == [job]


def test_variants_decisions_and_approved_pairs(store):
    job = store.add_job("variants", {}, None)
    ids = store.add_variants([variant_record(0), variant_record(1, "raise"), variant_record(2, inversion=False)], job_id=job)
    assert ids == [1, 2, 3]
    assert store.add_variants([variant_record(0)], job_id=job) == [1]  # ingesting the same file twice adds nothing
    v = store.get_variant(1)
    assert v["trace"] == [0.0, 0.25, 0.5] and len(v["steps"]) == 3 and v["steps"][1]["rewards"] == [0.1, 0.2]
    assert v["status"] == "pending" and v["prompt"] == [{"role": "user", "content": "question 0"}]
    assert store.list_variants()["id"].tolist() == [1, 2]
    assert store.list_variants(inversions_only=False)["id"].tolist() == [1, 2, 3]

    store.decide(1, "reject", note="not convincing")
    store.decide(1, "approve", note="on second look, fine")  # latest decision wins, history kept
    store.decide(2, "edit", edited_text="an even worse answer 1")
    store.decide(3, "reject")
    assert store.list_variants(decision="approved")["id"].tolist() == [1, 2]
    assert store.list_variants(inversions_only=False, decision="rejected")["id"].tolist() == [3]
    assert store.list_variants(decision="pending").empty
    assert [h["decision"] for h in store.get_variant(1)["history"]] == ["reject", "approve"]
    prompt0, prompt1 = ({"role": "user", "content": "question 0"},), ({"role": "user", "content": "question 1"},)
    assert store.approved_pairs() == [
        PreferencePair("toy:0:lower#1", prompt0, "variant 0 lower", "bad answer 0"),        # (y', y-)
        PreferencePair("toy:1:raise#2", prompt1, "good answer 1", "an even worse answer 1")]  # (y+, edited y'')


def test_export_and_import_trl_round_trip(store, tmp_path):
    ids = store.add_variants([variant_record(0), variant_record(1, "raise")])
    store.decide(ids[0], "approve")
    store.decide(ids[1], "edit", edited_text="worse")
    assert store.export_trl(tmp_path / "approved.jsonl") == 2
    assert store.export_trl(tmp_path / "approved.parquet") == 2
    rows = [json.loads(line) for line in (tmp_path / "approved.jsonl").read_text().splitlines()]
    assert rows[1] == {"prompt": [{"role": "user", "content": "question 1"}], "chosen": "good answer 1", "rejected": "worse"}
    assert [p.to_trl() for p in load_preferences(tmp_path / "approved.parquet").pairs] == rows  # train-rm reads it back
    other = Store(tmp_path / "other.duckdb")
    assert other.import_trl(tmp_path / "approved.parquet") == 2
    assert other.import_trl(tmp_path / "approved.jsonl") == 0  # the same pairs: nothing new
    assert [p.to_trl() for p in other.approved_pairs()] == rows
    assert other.list_variants()["note"].tolist() == ["imported from approved.parquet"] * 2
    other.decide(1, "edit", edited_text="a better chosen answer")  # an imported pair's variant side is its chosen one
    assert other.approved_pairs()[0].chosen == "a better chosen answer"


def test_bad_input_is_refused_clearly_and_changes_nothing(store, tmp_path):
    job = store.add_job("variants", {}, None)
    store.add_variants([variant_record(0), variant_record(1, inversion=False)], job_id=job)
    store.decide(1, "approve")
    before = table_counts(store.path)
    job_before = store.get_job(job)
    refusals = [
        (lambda: store.decide(99, "approve"), "there is no variant with id 99. Fix: pick an id from list_variants()."),
        (lambda: store.decide(1, "maybe"), "decision='maybe' is not a decision"),
        (lambda: store.decide(1, "edit"), "edited_text must be text"),
        (lambda: store.decide(1, "edit", edited_text="x" * (MAX_TEXT + 1)), "edited_text is 50,001 characters long, over the limit of 50,000"),
        (lambda: store.decide(1, "edit", edited_text="bad answer 0"), "the edited text equals the other response"),
        (lambda: store.decide(1, "approve", edited_text="new"), "use decision='edit' to change the text"),
        (lambda: store.decide(2, "approve"), "variant 2 is not an inversion"),
        (lambda: store.decide(1, "reject", note="n" * 5001), "note is 5,001 characters long"),
        (lambda: store.update_job(77, state="running"), "there is no job with id 77"),
        (lambda: store.update_job(job, state="exploded"), "state='exploded' is not a job state"),
        (lambda: store.update_job(job, progress=1.5), "progress=1.5 is outside [0, 1]"),
        (lambda: store.update_job(job, colour="red"), "unknown field(s) ['colour']"),
        (lambda: store.update_job(job, step=3, rerun_of=55), "there is no job with id 55"),
        (lambda: store.add_variants([variant_record(5), variant_record(6, "sideways")], job_id=job), "direction='sideways'"),
        (lambda: store.add_variants([variant_record(5), {"pair_id": "x"}]), "variant record 1 lacks"),
        (lambda: store.add_variants([variant_record(5)], job_id=12), "there is no job with id 12"),
        (lambda: store.add_variants([variant_record(5, text="t" * (MAX_TEXT + 1))]), "text of variant record 0 is 50,001"),
        (lambda: store.add_job("train-rm", {"f": object()}, None), "config cannot be stored as JSON"),
        (lambda: store.add_job("rm -rf /", {}, None), "is not a job name"),
        (lambda: store.get_job("1; DROP TABLE jobs"), "is not an integer >= 1"),
        (lambda: store.list_variants(decision="approve"), "decision='approve' is not a status to filter on"),
        (lambda: store.export_trl(tmp_path / "out.csv"), "unknown export format"),
    ]
    for call, message in refusals:
        with pytest.raises(StoreError) as info:
            call()
        assert message in str(info.value), (message, str(info.value))
        assert info.value.fix
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "same", "rejected": "same"}])
    with pytest.raises(StoreError, match="row 2: chosen and rejected responses are identical"):
        store.import_trl(bad)
    assert table_counts(store.path) == before
    assert store.get_job(job) == job_before
    assert store.get_variant(1)["status"] == "approved"


# --------------------------------------------------------------------------- concurrency and crashes

def _writer(path: str, tag: str, variant_ids: list[int], job_id: int, rounds: int) -> None:
    store = Store(path)
    for i in range(rounds):
        store.decide(variant_ids[i % len(variant_ids)], "approve" if i % 2 else "reject", note=f"{tag}-{i}")
        store.update_job(job_id, state="running", step=i + 1, total=rounds, progress=(i + 1) / rounds, message=f"{tag}-{i}")


def test_threads_and_processes_write_at_once_while_a_reader_polls(store):
    ids = store.add_variants([variant_record(i) for i in range(4)])
    writers = {f"p{k}": store.add_job("train-rm", {}, None) for k in range(2)}
    writers.update({f"t{k}": store.add_job("train-rm", {}, None) for k in range(3)})
    rounds, errors, seen, stop = 8, [], [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.append(len(store.list_variants(inversions_only=False)) + len(store.list_jobs()))
                store.get_variant(ids[0])
            except Exception as exc:  # noqa: BLE001 - any lock error escaping would land here
                errors.append(exc)

    def guarded(*args):
        try:
            _writer(*args)
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(store.path), tag, ids, writers[tag], rounds)) for tag in ("p0", "p1")]
    threads = [threading.Thread(target=guarded, args=(str(store.path), tag, ids, writers[tag], rounds)) for tag in ("t0", "t1", "t2")]
    poller = threading.Thread(target=reader)
    poller.start()
    for w in procs + threads:
        w.start()
    for w in threads + procs:
        w.join(timeout=300)
    stop.set()
    poller.join()
    assert errors == [] and [p.exitcode for p in procs] == [0, 0] and seen
    notes = {h["note"] for v in ids for h in store.get_variant(v)["history"]}
    assert notes == {f"{tag}-{i}" for tag in writers for i in range(rounds)}  # every decision of every writer is there
    for tag, job in writers.items():
        j = store.get_job(job)
        assert (j["step"], j["progress"], j["message"]) == (rounds, 1.0, f"{tag}-{rounds - 1}")


def _endless_writer(path: str, done_path: str) -> None:
    store = Store(path)
    for i in range(10**6):
        store.decide(1, "reject", note=f"kill-{i}")
        with open(done_path, "a") as fh:
            fh.write(f"{i}\n")


def test_a_writer_killed_mid_write_leaves_the_store_usable(store, tmp_path):
    store.add_variants([variant_record(0)])
    done = tmp_path / "done.txt"
    proc = multiprocessing.get_context("spawn").Process(target=_endless_writer, args=(str(store.path), str(done)))
    proc.start()
    while not done.exists() or len(done.read_text().splitlines()) < 5:
        assert proc.is_alive()
        store.list_jobs()  # keep competing for the file meanwhile
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    confirmed = len(done.read_text().splitlines())
    reopened = Store(store.path, timeout=30)
    history = reopened.get_variant(1)["history"]
    # every write the writer confirmed is there, plus at most the one committed just before the kill
    assert confirmed <= len(history) <= confirmed + 1
    assert [h["note"] for h in history[:confirmed]] == [f"kill-{i}" for i in range(confirmed)]
    assert reopened.decide(1, "approve") == len(history) + 1
