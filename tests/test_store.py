import json
import multiprocessing
import os
import signal
import threading

import duckdb
import pytest

from reform_engine.data import PreferencePair, load_preferences, write_jsonl
from reform_engine.backups import BackupConfig
from reform_engine.store import (MAX_TEXT, SCHEMA_VERSION, ImportResult, Store, StoreCorrupt, StoreError, default_store_path,
                                 restore_database, set_aside, verify_database)


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


def database_at(path, version: int, *inserts: str):
    """A database as migration ``version`` left it, with ``inserts`` run in it -> its path."""
    import reform_engine.store as store_module

    con = duckdb.connect(str(path))
    for sql in [q for m in store_module.MIGRATIONS[:version] for q in m]:
        con.execute(sql)
    con.execute("INSERT INTO schema_version VALUES " + ", ".join(f"({v}, now())" for v in range(1, version + 1)))
    for sql in inserts:
        con.execute(sql)
    con.close()
    return path


def old_variant(**columns: str) -> str:
    """The SQL that stores one decoded 'lower' variant in an old schema's table, with its extra ``columns``."""
    values = {"key": "'k'", "pair_id": "'toy:0'", "direction": "'lower'",
              "prompt": "'[{\"role\": \"user\", \"content\": \"q\"}]'", "original_chosen": "'good'",
              "original_rejected": "'bad'", "text": "'worse'", "is_inversion": "TRUE", "steps": "'[]'", "trace": "'[]'",
              **columns, "created_at": "now()"}
    return f"INSERT INTO variants ({', '.join(values)}) VALUES ({', '.join(values.values())})"


def test_default_path_comes_from_the_project_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("REFORM_PROJECT_DIR", str(tmp_path / "proj"))
    assert default_store_path() == tmp_path / "proj" / "reform.duckdb"
    assert Store().path == (tmp_path / "proj" / "reform.duckdb").resolve()
    monkeypatch.delenv("REFORM_PROJECT_DIR")
    assert str(default_store_path()) == os.path.join("project_data", "reform.duckdb")


def test_schema_is_created_once_and_migrated_forward(tmp_path, monkeypatch):
    path = tmp_path / "r.duckdb"
    Store(path)
    assert schema_version(path) == SCHEMA_VERSION == 8
    Store(path)
    assert schema_version(path) == 8  # reopening does not re-run migrations
    import reform_engine.store as store_module
    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS + [["ALTER TABLE jobs ADD COLUMN priority INTEGER"]])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 9)
    migrated = Store(path)
    assert schema_version(path) == 9
    assert "priority" in migrated.list_jobs().columns
    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:8])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 8)
    with pytest.raises(StoreError, match="schema version 9; this code knows up to 8"):
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
    assert schema_version(path) == SCHEMA_VERSION
    assert store.list_jobs()[["id", "kind"]].values.tolist() == [[1, "train-rm"]]
    assert store.list_variants()[["pair_id", "status", "note"]].values.tolist() == [["toy:0", "approved", "ok"]]
    con = duckdb.connect(str(path))
    try:
        left = con.execute("SELECT table_name FROM information_schema.tables ORDER BY table_name").fetchall()
        sequences = con.execute("SELECT sequence_name FROM duckdb_sequences() ORDER BY sequence_name").fetchall()
    finally:
        con.close()
    assert [t for (t,) in left] == ["decisions", "jobs", "schema_version", "score_sets", "variants"]
    assert [s for (s,) in sequences] == ["decisions_id", "jobs_id", "variants_id"]


def test_variants_stored_before_the_verdict_flags_load_with_the_flags_unknown(tmp_path):
    path = database_at(tmp_path / "v4.duckdb", 4,  # a database as the fourth schema left it, with a decoded variant in it
                       old_variant(perplexity="63.75"))
    store = Store(path)
    assert schema_version(path) == SCHEMA_VERSION
    listed = store.list_variants()
    assert listed[["text", "perplexity", "plain_perplexity", "fluent", "truncated", "is_inversion"]].values.tolist()[0][:2] == ["worse", 63.75]
    assert listed["plain_perplexity"].isna().all() and listed["fluent"].isna().all() and listed["truncated"].isna().all()
    v = store.get_variant(1)
    assert (v["fluent"], v["truncated"], v["plain_perplexity"], v["is_inversion"]) == (None, None, None, True)


def test_the_verdict_flags_are_stored_with_each_variant(store):
    job = store.add_job("variants", {})
    flagged = {**variant_record(0, inversion=False), "plain_perplexity": 2.5, "fluent": False, "truncated": True}
    ids = store.add_variants([flagged, {**variant_record(1), "plain_perplexity": 2.5, "fluent": True, "truncated": False}], job)
    got = [store.get_variant(i) for i in ids]
    assert [(v["plain_perplexity"], v["fluent"], v["truncated"], v["is_inversion"]) for v in got] == \
        [(2.5, False, True, False), (2.5, True, False, True)]
    assert store.list_variants(inversions_only=False)["fluent"].tolist() == [False, True]


def test_variants_stored_before_the_appropriateness_check_read_it_as_not_checked(tmp_path):
    path = database_at(tmp_path / "v6.duckdb", 6,  # a database as the sixth schema left it, with a decoded variant in it
                       old_variant(fluent="TRUE"))
    store = Store(path)
    assert schema_version(path) == SCHEMA_VERSION
    listed = store.list_variants()
    assert listed["text"].tolist() == ["worse"] and listed["appropriate"].isna().all() and listed["appropriateness"].isna().all()
    v = store.get_variant(1)
    assert (v["appropriate"], v["appropriateness"], v["fluent"], v["is_inversion"]) == (None, None, True, True)


def test_the_appropriateness_verdict_is_stored_with_each_variant(store):
    job = store.add_job("variants", {})
    ids = store.add_variants([{**variant_record(0), "appropriate": False, "appropriateness": "rules: complies (steps: '1. W')"},
                              {**variant_record(1), "appropriate": True, "appropriateness": "judge: 0.500 >= rejected 0.250"},
                              variant_record(2, direction="raise")], job)
    got = [store.get_variant(i) for i in ids]
    assert [(v["appropriate"], v["appropriateness"]) for v in got] == \
        [(False, "rules: complies (steps: '1. W')"), (True, "judge: 0.500 >= rejected 0.250"), (None, None)]
    assert store.list_variants()["appropriate"].tolist()[:2] == [False, True]
    before = table_counts(store.path)
    with pytest.raises(StoreError, match="appropriate of variant record 0"):
        store.add_variants([{**variant_record(3), "appropriate": "no"}], job)
    assert table_counts(store.path) == before


def test_variants_stored_before_personas_load_with_the_persona_unknown(tmp_path):
    path = database_at(tmp_path / "v6.duckdb", 6,  # a database as the sixth schema left it, with a decoded variant in it
                       old_variant())
    store = Store(path)
    assert schema_version(path) == SCHEMA_VERSION
    listed = store.list_variants()
    assert listed["text"].tolist() == ["worse"] and listed["persona"].isna().all()
    assert store.get_variant(1)["persona"] is None


def test_the_persona_is_stored_with_each_variant(store):
    job = store.add_job("variants", {})
    ids = store.add_variants([{**variant_record(0), "persona": "aligned"}, {**variant_record(1), "persona": "custom: Be terse."},
                              variant_record(2)], job)
    assert [store.get_variant(i)["persona"] for i in ids] == ["aligned", "custom: Be terse.", None]
    listed = store.list_variants(inversions_only=False)["persona"]
    assert listed[:2].tolist() == ["aligned", "custom: Be terse."] and listed.isna().tolist() == [False, False, True]
    with pytest.raises(StoreError, match="persona of variant record 0 must be text"):
        store.add_variants([{**variant_record(3), "persona": 7}], job)


def test_an_inversion_flagged_not_fluent_is_refused(store):
    before = table_counts(store.path)
    with pytest.raises(StoreError, match="marked an inversion but flagged not fluent"):
        store.add_variants([{**variant_record(0), "fluent": False}])
    with pytest.raises(StoreError, match="fluent of variant record 0 is 'no'"):
        store.add_variants([{**variant_record(0), "fluent": "no"}])
    assert table_counts(store.path) == before


def test_a_one_token_or_empty_variant_cannot_be_sent_to_curation(store):
    one = {**variant_record(0, inversion=False), "text": "No", "n_tokens": 1}
    with pytest.raises(StoreError, match="cannot be sent to curation: it is 1 token long; a variant needs at least 2"):
        store.add_variants([one])
    steps_only = {**variant_record(1, inversion=False), "text": "No"}
    steps_only["steps"] = steps_only["steps"][:1] + [{**steps_only["steps"][1], "is_eos": True}]  # one token, then EOS
    with pytest.raises(StoreError, match="it is 1 token long"):
        store.add_variants([steps_only])
    with pytest.raises(StoreError, match="cannot be sent to curation: its text is empty"):
        store.add_variants([{**variant_record(2, inversion=False), "text": "  "}])
    assert table_counts(store.path)["variants"] == 0
    # a batch job keeps what it decoded (the verdict already says no), and a 2-token variant is sent
    assert len(store.add_variants([one], store.add_job("variants", {}))) == 1
    assert len(store.add_variants([{**one, "n_tokens": 2}])) == 1


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
    assert other.import_trl(tmp_path / "approved.parquet") == ImportResult(added=2, already_present=0)
    assert other.import_trl(tmp_path / "approved.jsonl") == ImportResult(added=0, already_present=2)  # nothing new
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


# --------------------------------------------------------------------------- decisions are unlosable

def approved_store(path, n: int, every: int = 0, keep: int = 10) -> Store:
    """A store with n approved inversions (variants 1..n), one decision each, by 'ann'."""
    store = Store(path, backup=BackupConfig(every=every, keep=keep))
    for i in store.add_variants([variant_record(i) for i in range(n)]):
        store.decide(i, "approve", reviewer="ann")
    return store


BLOCK, HEADERS = 262_144, 12_288  # DuckDB's storage blocks, after its three 4 KiB headers


def damage(path, how: str) -> bytes:
    """Cut the file in half, or write 4 KiB of garbage over the start of every storage block in the
    middle of the file, all but the first (the catalog: the file still opens, as in the issue; a small
    database fills only the start of its blocks) -> the damaged bytes."""
    data = bytearray(path.read_bytes())
    if how == "truncated":
        del data[len(data) // 2:]
    else:
        for block in range(HEADERS + BLOCK, len(data), BLOCK):
            data[block:block + 4096] = bytes((i * 7919 + 13) % 256 for i in range(4096))
    path.write_bytes(bytes(data))
    return bytes(data)


def test_an_old_database_keeps_its_decisions_and_records_the_reviewer_from_now_on(tmp_path, monkeypatch):
    import reform_engine.store as store_module

    path = tmp_path / "old.duckdb"
    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:1])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 1)
    Store(path)
    con = duckdb.connect(str(path))  # a variant and a decision as the code before reviewers wrote them
    con.execute("INSERT INTO variants (key, pair_id, direction, prompt, original_chosen, original_rejected, text, is_inversion, "
                "steps, trace, created_at) VALUES ('k', 'toy:0', 'lower', '[{\"role\": \"user\", \"content\": \"q\"}]', "
                "'good', 'bad', 'worse', TRUE, '[]', '[]', now())")
    con.execute("INSERT INTO decisions (variant_id, decision, edited_text, note, decided_at) VALUES (1, 'approve', NULL, 'old', now())")
    con.close()
    monkeypatch.undo()

    store = Store(path)
    assert schema_version(path) == SCHEMA_VERSION == 8
    (snapshot,) = store.list_backups()  # taken before the migration: the file as the older code left it
    assert "-start" in snapshot.name and verify_database(snapshot)["schema_version"] == 1
    store.decide(1, "reject", note="new", reviewer="  Bea ")
    history = store.get_variant(1)["history"]
    assert [(h["decision"], h["note"], h["reviewer"]) for h in history] == [("approve", "old", None), ("reject", "new", "Bea")]
    assert store.list_variants(decision="rejected")["reviewer"].tolist() == ["Bea"]
    with pytest.raises(StoreError, match="reviewer is empty"):
        store.decide(1, "approve", reviewer=" ")


def test_the_full_decision_log_exports_every_decision_with_its_note_reviewer_and_time(store, tmp_path):
    ids = store.add_variants([variant_record(0), variant_record(1, "raise")])
    store.decide(ids[0], "reject", note="too odd", reviewer="ann")
    store.decide(ids[0], "approve", note="fine after all", reviewer="bea")
    store.decide(ids[1], "edit", edited_text="worse", reviewer="ann")
    log = store.decision_log()
    assert [(r["decision_id"], r["variant_id"], r["decision"], r["note"], r["reviewer"], r["edited_text"]) for r in log] == [
        (1, ids[0], "reject", "too odd", "ann", None), (2, ids[0], "approve", "fine after all", "bea", None),
        (3, ids[1], "edit", "", "ann", "worse")]
    assert log[2]["prompt"] == [{"role": "user", "content": "question 1"}] and log[2]["variant_text"] == "variant 1 raise"
    assert log[0]["decided_at"] <= log[1]["decided_at"] <= log[2]["decided_at"]

    assert store.export_decisions(tmp_path / "log.jsonl") == 3
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["decided_at"] for r in rows] == [r["decided_at"].isoformat() + "Z" for r in log]
    assert [{k: v for k, v in r.items() if k != "decided_at"} for r in rows] == [
        {k: v for k, v in r.items() if k != "decided_at"} for r in log]
    import pyarrow.parquet as pq

    assert store.export_decisions(tmp_path / "log.parquet") == 3
    assert pq.read_table(tmp_path / "log.parquet").to_pylist() == rows


def test_exporting_the_approved_pairs_and_importing_them_back_adds_nothing(tmp_path):
    store = approved_store(tmp_path / "reform.duckdb", 11)
    store.decide(1, "edit", edited_text="an edited variant 0")  # the edited pair is the one exported
    assert store.export_trl(tmp_path / "approved.jsonl") == 11
    assert store.import_trl(tmp_path / "approved.jsonl") == ImportResult(added=0, already_present=11)
    assert len(store.approved_pairs()) == 11
    rows = [json.loads(line) for line in (tmp_path / "approved.jsonl").read_text().splitlines()]
    write_jsonl(tmp_path / "more.jsonl", rows + [{"prompt": "a new question", "chosen": "a", "rejected": "b"}])
    assert store.import_trl(tmp_path / "more.jsonl") == ImportResult(added=1, already_present=11)
    assert store.import_trl(tmp_path / "more.jsonl") == ImportResult(added=0, already_present=12)
    assert len(store.approved_pairs()) == 12


def test_text_with_a_lone_surrogate_is_refused_with_a_message_and_stores_nothing(store, tmp_path):
    store.add_variants([variant_record(0)])
    before = table_counts(store.path)
    bad = "fine \ud800 text"
    refusals = [
        (lambda: store.decide(1, "reject", note=bad), "note contains a lone surrogate ('\\ud800' at character 5)"),
        (lambda: store.decide(1, "edit", edited_text=bad), "edited_text contains a lone surrogate"),
        (lambda: store.decide(1, "reject", reviewer=bad), "reviewer contains a lone surrogate"),
        (lambda: store.add_variants([variant_record(1, text=bad)]), "text of variant record 0 contains a lone surrogate"),
        (lambda: store.add_variants([{**variant_record(1), "prompt": [{"role": "user", "content": bad}]}]),
         "prompt contains a lone surrogate"),
        (lambda: store.add_job("train-rm", {"data": bad}), "config contains a lone surrogate"),
    ]
    for call, message in refusals:
        with pytest.raises(StoreError) as info:
            call()
        assert message in str(info.value) and info.value.fix.startswith("remove or replace that character"), str(info.value)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "q", "chosen": "fine", "rejected": "no"}\n'
                                        '{"prompt": "q", "chosen": "ok \\ud800", "rejected": "no"}\n')
    assert len(load_preferences(tmp_path / "bad.jsonl").pairs) == 2  # the loader takes it: JSON allows the escape
    with pytest.raises(StoreError, match="chosen of pair 2 contains a lone surrogate"):
        store.import_trl(tmp_path / "bad.jsonl")
    assert table_counts(store.path) == before


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="a full disk is simulated with /dev/full")
def test_a_full_disk_is_a_store_error_and_everything_stored_before_stays(store):
    store.add_variants([variant_record(0)])
    store.decide(1, "approve", note="kept")
    wal = store.path.with_name(store.path.name + ".wal")
    wal.symlink_to("/dev/full")  # every write to the write-ahead log fails with "No space left on device"
    with pytest.raises(StoreError) as info:
        store.decide(1, "reject", note="lost to the full disk")
    assert f"the disk holding {store.path} is full, so nothing was stored" in info.value.message
    assert "No space left on device" in info.value.message and info.value.fix.startswith("free some disk space")
    wal.unlink()  # space again
    assert [h["note"] for h in store.get_variant(1)["history"]] == ["kept"]
    store.decide(1, "reject", note="after freeing space")
    assert [h["note"] for h in store.get_variant(1)["history"]] == ["kept", "after freeing space"]


def test_any_other_duckdb_error_is_a_store_error_with_duckdbs_message(store):
    con = duckdb.connect(str(store.path))
    con.execute("DROP TABLE jobs")  # someone edited the file by hand
    con.close()
    with pytest.raises(StoreError) as info:
        store.list_jobs()
    assert "refused the request (CatalogException" in info.value.message and "jobs does not exist" in info.value.message
    assert info.value.fix


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_damaged_file_is_store_corrupt_on_every_call_and_is_never_written_over(tmp_path, how):
    path = tmp_path / "reform.duckdb"
    store = approved_store(path, 40)
    damaged = damage(path, how)
    with pytest.raises(StoreCorrupt) as info:
        store.decision_log()  # reads every decision, so it reaches the damage
    assert info.value.db == path and str(path) in info.value.message
    assert "python -m reform_engine restore" in info.value.fix and "kept" in info.value.fix
    with pytest.raises(StoreCorrupt):
        Store(path)  # its first use in a process snapshots it, and the read-back finds the damage
    with pytest.raises(StoreCorrupt):
        verify_database(path)
    with pytest.raises(StoreCorrupt):
        store.decide(1, "reject", reviewer="ann")
    assert path.read_bytes() == damaged
    assert store.list_backups() == []  # a damaged file is never taken for a snapshot


def test_snapshots_are_taken_on_start_and_every_n_decisions_and_the_oldest_are_rotated_out(tmp_path):
    path = tmp_path / "reform.duckdb"
    config = BackupConfig(every=4, keep=3)
    store = Store(path, backup=config)  # a new database: nothing to snapshot yet
    assert store.list_backups() == []
    ids = store.add_variants([variant_record(i) for i in range(12)])
    for n, i in enumerate(ids[:10], start=1):
        store.decide(i, "approve", reviewer="ann")
        assert len(store.list_backups()) == n // 4
    Store(path, backup=config)  # the first use of an existing database in this process
    Store(path, backup=config)  # not the second
    snapshots = store.list_backups()
    assert [s.name.rsplit("-", 1)[1] for s in snapshots] == ["start.duckdb", "auto.duckdb", "auto.duckdb"]
    assert [verify_database(s)["decisions"] for s in snapshots] == [10, 8, 4]
    store.decide(ids[10], "approve")
    store.decide(ids[11], "approve")
    assert [verify_database(s)["decisions"] for s in store.list_backups()] == [12, 10, 8]  # the oldest rotated out
    assert store.backup_error is None


def test_restore_keeps_the_current_file_aside_and_takes_the_newest_snapshot_that_reads_back(tmp_path):
    path = tmp_path / "reform.duckdb"
    store = approved_store(path, 10, every=5, keep=5)
    newest, older = store.list_backups()
    damage(newest, "truncated")
    broken = damage(path, "garbage")
    with pytest.raises(StoreError, match="cannot be restored"):
        restore_database(path, newest)  # named explicitly: refused, nothing replaced
    assert path.read_bytes() == broken

    done = restore_database(path, config=store.backup_config)
    assert done.restored_from == older and len(done.skipped) == 1 and done.skipped[0].startswith(newest.name)
    assert done.kept_aside.name.startswith("reform.duckdb.replaced-") and done.kept_aside.read_bytes() == broken
    assert store.list_variants(decision="approved")["id"].tolist() == [1, 2, 3, 4, 5]  # the same Store reads the new file
    assert store.decide(6, "approve", reviewer="bea") == 6
    with pytest.raises(StoreError, match="there are no snapshots"):
        restore_database(tmp_path / "other.duckdb")


def test_setting_a_damaged_file_aside_keeps_it_and_the_next_call_starts_a_fresh_database(tmp_path):
    path = tmp_path / "reform.duckdb"
    store = approved_store(path, 3)
    broken = damage(path, "truncated")
    aside = set_aside(path)
    assert aside.name.startswith("reform.duckdb.broken-") and aside.read_bytes() == broken
    assert store.list_variants().empty and schema_version(path) == SCHEMA_VERSION
    assert set_aside(tmp_path / "nothing.duckdb") is None


def _greedy_holder(lock, order: list, queued_behind: threading.Event) -> None:
    import time

    from reform_engine import store as store_module

    for i in range(40):
        with store_module._turn(lock, time.monotonic() + 60, lock):
            order.append("holder")
            if i == 0:
                queued_behind.set()
                queue = lock.with_name(lock.name + ".queue")
                guard = time.monotonic() + 2  # hang guard only: flock with backoff has no queue to watch
                while len(list(queue.glob("0*"))) < 2 and time.monotonic() < guard:
                    time.sleep(0.001)
            time.sleep(0.002)


def test_a_waiter_gets_the_turn_before_a_holder_that_asks_again(tmp_path):
    import time

    from reform_engine import store as store_module

    lock, order, queued_behind = tmp_path / "db.lock", [], threading.Event()
    holder = threading.Thread(target=_greedy_holder, args=(lock, order, queued_behind))
    holder.start()
    queued_behind.wait()
    with store_module._turn(lock, time.monotonic() + 60, lock):
        order.append("waiter")
    holder.join()
    assert order[:3] == ["holder", "waiter", "holder"]  # it asked during the first turn, so it has the second


def score_set(store, key: str, payload: str = '{"x": 1}', **over):
    fields = dict(rm_fingerprint="rm", data_fingerprint="data", row_range="0:10", max_length=1024, format=1, n_pairs=10,
                  checksum="c", payload=payload)
    fields.update(over)
    store.put_score_set(key, **fields)


def test_a_fourth_version_database_gains_the_score_sets_table_with_its_jobs_kept(tmp_path):
    path = database_at(tmp_path / "v4.duckdb", 4,  # a database as migration 4 left it, with a job
                       "INSERT INTO jobs (kind, config, state, created_at, updated_at) VALUES ('train-rm', '{}', 'succeeded', now(), now())")
    store = Store(path, backup=BackupConfig(on_start=False))
    assert schema_version(path) == SCHEMA_VERSION == 8
    assert list(store.list_jobs()["kind"]) == ["train-rm"]
    assert store.get_score_set("k") is None
    score_set(store, "k")
    assert store.get_score_set("k")["payload"] == '{"x": 1}'


def test_a_score_set_is_stored_replaced_under_its_key_and_only_the_newest_are_kept(tmp_path):
    store = Store(tmp_path / "r.duckdb")
    score_set(store, "a", '{"v": 1}')
    row = store.get_score_set("a")
    assert {k: row[k] for k in ("key", "rm_fingerprint", "data_fingerprint", "row_range", "max_length", "format", "n_pairs",
                                "checksum", "payload")} == {
        "key": "a", "rm_fingerprint": "rm", "data_fingerprint": "data", "row_range": "0:10", "max_length": 1024,
        "format": 1, "n_pairs": 10, "checksum": "c", "payload": '{"v": 1}'}
    score_set(store, "a", '{"v": 2}')
    assert store.get_score_set("a")["payload"] == '{"v": 2}'
    score_set(store, "b", keep=2)
    score_set(store, "c", keep=2)
    assert [store.get_score_set(k) is not None for k in "abc"] == [False, True, True]


def test_a_bad_score_set_is_refused_before_anything_is_written(tmp_path):
    store = Store(tmp_path / "r.duckdb")
    with pytest.raises(StoreError, match="max_length=-1 is not an integer >= 0"):
        score_set(store, "a", max_length=-1)
    with pytest.raises(StoreError, match="payload is empty"):
        score_set(store, "a", payload=" ")
    assert store.get_score_set("a") is None
