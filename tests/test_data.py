import gzip
import json

import pandas as pd
import pytest

from reform_engine.data import (DataError, PreferencePair, load_demo, load_preferences, pairs_from_rows, parse_hh_dialogue,
                                select_rows, write_jsonl)

HH = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How do I boil an egg?\n\nAssistant: Simmer it for 9 minutes.",
      "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How do I boil an egg?\n\nAssistant: Eggs are round."}


def test_parse_hh_dialogue_splits_turns_and_response():
    prompt, response = parse_hh_dialogue(HH["chosen"])
    assert prompt == ({"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": "How do I boil an egg?"})
    assert response == "Simmer it for 9 minutes."


def test_hh_rows_roundtrip_through_to_hh(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [HH])
    pair = load_preferences(tmp_path / "a.jsonl").pairs[0]
    assert (pair.chosen, pair.rejected) == ("Simmer it for 9 minutes.", "Eggs are round.")
    assert pair.to_hh() == {"chosen": HH["chosen"].replace("Assistant: Simmer", "Assistant: Simmer"),
                            "rejected": HH["rejected"]}


@pytest.mark.parametrize("prompt", ["Question?", [{"role": "user", "content": "Question?"}]])
def test_trl_format_with_string_or_message_prompt(prompt):
    data = pairs_from_rows([{"prompt": prompt, "chosen": "Good.", "rejected": "Bad."}], "mem")
    assert data.pairs[0].prompt == ({"role": "user", "content": "Question?"},)
    assert (data.pairs[0].chosen, data.pairs[0].rejected) == ("Good.", "Bad.")


def test_trl_implicit_prompt_message_lists():
    user = {"role": "user", "content": "Q"}
    row = {"chosen": [user, {"role": "assistant", "content": "A1"}], "rejected": [user, {"role": "assistant", "content": "A2"}]}
    pair = pairs_from_rows([row], "mem").pairs[0]
    assert (pair.prompt, pair.chosen, pair.rejected) == ((user,), "A1", "A2")


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".csv", ".parquet", ".json"])
def test_every_file_type_loads_the_same_pairs(tmp_path, suffix):
    rows = [{"prompt": "Q1", "chosen": "yes", "rejected": "no"}, {"prompt": "Q2", "chosen": "a, \"quoted\" b", "rejected": "c"}]
    path = tmp_path / f"d{suffix}"
    if suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows).encode()
        path.write_bytes(gzip.compress(text) if suffix.endswith(".gz") else text)
    pairs = load_preferences(path).pairs
    assert [(p.prompt[0]["content"], p.chosen, p.rejected) for p in pairs] == [("Q1", "yes", "no"), ("Q2", "a, \"quoted\" b", "c")]


def test_column_map_renames_columns():
    data = pairs_from_rows([{"question": "Q", "good": "A", "bad": "B"}], "mem",
                           column_map={"question": "prompt", "good": "chosen", "bad": "rejected"})
    assert data.pairs[0].chosen == "A"


def _err(rows, **kw) -> DataError:
    with pytest.raises(DataError) as info:
        pairs_from_rows(rows, "f.jsonl", **kw)
    return info.value


def test_missing_column_names_file_row_and_fix():
    err = _err([{"prompt": "Q", "chosen": "A"}])
    assert "f.jsonl, row 1" in str(err) and "missing column(s) ['rejected']" in str(err) and "column_map" in str(err)


@pytest.mark.parametrize("row,needle", [
    ({"prompt": "Q", "chosen": "  ", "rejected": "B"}, "chosen response is empty"),
    ({"prompt": "Q", "chosen": "A", "rejected": ""}, "rejected response is empty"),
    ({"prompt": "Q", "chosen": "Same", "rejected": "Same"}, "identical"),
])
def test_bad_rows_are_refused_with_row_number(row, needle):
    err = _err([{"prompt": "Q", "chosen": "ok", "rejected": "fine"}, row])
    assert err.row == 2 and needle in str(err)


def test_hh_row_without_assistant_turn_is_refused():
    err = _err([HH, {"chosen": "\n\nHuman: no reply", "rejected": HH["rejected"]}])
    assert err.row == 2 and 'no "\\n\\nAssistant:" turn' in str(err)


def test_skip_invalid_reports_skipped_rows():
    data = pairs_from_rows([{"prompt": "Q", "chosen": "A", "rejected": "A"}, {"prompt": "Q", "chosen": "A", "rejected": "B"}],
                           "f.jsonl", skip_invalid=True)
    assert len(data.pairs) == 1 and data.report.skipped == [(1, "chosen and rejected responses are identical, so the pair says nothing")]
    assert data.pairs[0].pair_id == "f.jsonl:1"


def test_undecodable_bytes_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "Q", "chosen": "A", "rejected": "B"}\n{"prompt": "caf\xe9", "chosen": "A", "rejected": "B"}\n')
    with pytest.raises(DataError) as info:
        load_preferences(path)
    assert info.value.row == 2 and "UTF-8" in str(info.value)


def test_malformed_json_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "Q", "chosen": "A", "rejected": "B"}\n{"prompt": \n')
    with pytest.raises(DataError) as info:
        load_preferences(path)
    assert info.value.row == 2 and "not valid JSON" in str(info.value)


def test_file_over_size_limit_is_refused(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"prompt": "Q", "chosen": "A" * 2000, "rejected": "B"}) + "\n")
    with pytest.raises(DataError, match="over the 0 MiB limit"):
        load_preferences(path, max_bytes=1000)


def test_unknown_type_and_missing_file(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown file type"):
        load_preferences(tmp_path / "x.txt")
    with pytest.raises(DataError, match="no such file"):
        load_preferences(tmp_path / "missing.jsonl")


def test_select_rows_uses_source_row_numbers():
    pairs = [PreferencePair(f"f:{i}", ({"role": "user", "content": "q"},), "a", "b") for i in (0, 1, 3, 4)]
    assert [p.pair_id for p in select_rows(pairs, "1:4")] == ["f:1", "f:3"]
    assert [p.pair_id for p in select_rows(pairs, "3:")] == ["f:3", "f:4"]
    with pytest.raises(ValueError, match="start:end"):
        select_rows(pairs, "1-4")


def test_the_pair_a_variant_adds_follows_the_method_with_texts_stripped():
    from reform_engine.data import added_pair

    assert added_pair("lower", "Good.", "Bad.", " Looks good, is not. ") == ("Looks good, is not.", "Bad.")  # (y', y-)
    assert added_pair("raise", " Good.", "Bad.", "Bad, scored high.\n") == ("Good.", "Bad, scored high.")  # (y+, y'')
    assert added_pair("imported", "Good.", "Bad.", "Good, edited.") == ("Good, edited.", "Bad.")  # the variant is its chosen side


def test_demo_set_is_large_valid_and_not_length_trivial():
    data = load_demo()
    assert len(data) >= 150 and not data.report.skipped
    longer = sum(len(p.chosen) > len(p.rejected) for p in data.pairs) / len(data)
    assert 0.3 < longer < 0.7, "a length-only rule must not solve the demo set"
    assert sum(len(p.prompt) > 1 for p in data.pairs) >= 20, "the demo set must have multi-turn dialogues"


def test_shared_hh_dev_file_loads(hh_dev_path):
    data = load_preferences(hh_dev_path, skip_invalid=True)
    assert data.report.rows_read == 1793
    assert len(data.pairs) + len(data.report.skipped) == 1793
    assert len(select_rows(data.pairs, "0:1500")) + len(select_rows(data.pairs, "1500:")) == len(data.pairs)


def test_the_engine_names_no_path_outside_the_repo():
    """Data beside the repo (../shared) belongs to the tests and benchmarks that use it, not the library."""
    import re
    from pathlib import Path

    import reform_engine

    engine = Path(reform_engine.__file__).parent
    outside = re.compile(r'parent\.parent\.parent|\.\./shared|"shared"\s*/')  # above the repo, or into ../shared
    assert [f.name for f in sorted(engine.glob("*.py")) if outside.search(f.read_text())] == []


def test_prompt_from_text_keeps_hh_turns_or_makes_one_user_message():
    from reform_engine.data import prompt_from_text

    assert prompt_from_text("  How do I boil an egg? ") == ({"role": "user", "content": "How do I boil an egg?"},)
    assert prompt_from_text("Human: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke.") == (
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke."})
    from reform_engine.data import hh_text
    turns = ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why?"})
    assert prompt_from_text(hh_text(turns)) == turns and prompt_from_text(hh_text(turns).strip()) == turns
    with pytest.raises(DataError, match="empty"):
        prompt_from_text("   ")
    with pytest.raises(DataError, match="Human"):
        prompt_from_text("Human: Hi\n\nAssistant: Hello!")


def test_save_upload_checks_type_and_size_and_keeps_the_name_inside(tmp_path):
    from reform_engine.data import load_preferences, save_upload

    row = b'{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}\n'
    path = save_upload("../../etc/my pairs.jsonl", row, tmp_path / "uploads", max_bytes=1000)
    assert path == tmp_path / "uploads" / "8a40d9df3a32d283-my_pairs.jsonl" and path.read_bytes() == row
    assert len(load_preferences(path)) == 1
    with pytest.raises(DataError, match="unknown file type"):
        save_upload("pairs.exe", row, tmp_path)
    with pytest.raises(DataError, match="over the"):
        save_upload("pairs.jsonl", row * 100, tmp_path, max_bytes=1000)
    with pytest.raises(DataError, match="empty"):
        save_upload("pairs.csv", b"", tmp_path)


# --------------------------------------------------------------------------- hostile and odd files

ROW = {"prompt": "Q", "chosen": "yes", "rejected": "no"}


def refusal_and_peak(path, **limits) -> tuple[DataError, int]:
    """load_preferences(path, **limits), which must refuse the file -> its DataError, and the peak of
    the memory Python allocated on the way (bytes)."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            load_preferences(path, **limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return info.value, peak


def test_a_gzip_bomb_is_refused_at_the_cap_without_inflating_it_in_memory(tmp_path):
    path = tmp_path / "bomb.jsonl.gz"
    with gzip.open(path, "wb") as fh:  # 64 MiB of zeros in ~64 KiB; written in chunks so the test itself stays small
        for _ in range(64):
            fh.write(bytes(2**20))
    error, peak = refusal_and_peak(path, max_bytes=2**20)
    assert str(error) == (f"{path}: expands beyond 1 MiB when decompressed (the max_bytes limit); stopped reading there. "
                          "Fix: split it into smaller files, or raise max_bytes if you trust the file.")
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB: the loader inflated far past the 1 MiB cap before refusing"


def test_a_json_list_of_strings_is_refused_with_the_file_and_row(tmp_path):
    path = tmp_path / "strings.json"
    path.write_text(json.dumps(["a", "b"]))
    with pytest.raises(DataError) as info:
        load_preferences(path)
    assert (info.value.source, info.value.row) == (str(path), 1)
    assert 'row is a str, not an object like {"prompt": ..., "chosen": ..., "rejected": ...}' in str(info.value)


@pytest.mark.parametrize("suffix,needle", [(".json", "JSON is nested too deeply to read."),
                                           (".jsonl", "line is JSON nested too deeply to be a preference pair.")])
def test_json_nested_100000_levels_is_refused_not_a_traceback(tmp_path, suffix, needle):
    path = tmp_path / f"deep{suffix}"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError) as info:
        load_preferences(path)
    assert info.value.source == str(path) and needle in str(info.value) and "Fix: " in str(info.value)


def test_a_fifo_or_a_device_is_named_for_what_it_is_and_never_opened_for_a_blocking_read(tmp_path):
    import os
    import threading

    fifo = tmp_path / "pairs.jsonl"
    os.mkfifo(fifo)
    outcome = {}

    def load(path):  # a loader that opened the FIFO for a blocking read would wait here forever for a writer
        try:
            load_preferences(path)
        except DataError as exc:
            outcome[str(path)] = str(exc)

    for path in (fifo, "/dev/zero"):
        worker = threading.Thread(target=load, args=(path,), daemon=True)
        worker.start()
        worker.join(timeout=60)  # a hang guard, not a speed bound: a correct loader returns at once
        assert not worker.is_alive(), f"loading {path} blocked"
    assert outcome == {str(fifo): f"{fifo}: is a FIFO (named pipe), not a regular file. Fix: save the data to a regular file and give its path.",
                       "/dev/zero": "/dev/zero: is a character device, not a regular file. Fix: save the data to a regular file and give its path."}
    with pytest.raises(DataError, match="is a directory, not a regular file. Fix: give the data file inside it."):
        load_preferences(tmp_path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_a_utf8_byte_order_mark_is_accepted(tmp_path, suffix):
    text = {".jsonl": json.dumps(ROW) + "\n", ".json": json.dumps([ROW]), ".csv": pd.DataFrame([ROW]).to_csv(index=False)}[suffix]
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    pair = load_preferences(path).pairs[0]
    assert (pair.prompt, pair.chosen, pair.rejected) == (({"role": "user", "content": "Q"},), "yes", "no")


def test_skip_invalid_skips_and_counts_a_malformed_json_line(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(ROW) + "\n{bad\n" + json.dumps({**ROW, "chosen": "sure"}) + "\n")
    data = load_preferences(path, skip_invalid=True)
    assert [(p.pair_id, p.chosen) for p in data.pairs] == [("f.jsonl:0", "yes"), ("f.jsonl:2", "sure")]
    assert data.report.rows_read == 3
    assert data.report.skipped == [(2, "line is not valid JSON (Expecting property name enclosed in double quotes, column 2)")]


def test_a_parquet_that_is_not_parquet_or_inflates_past_the_cap_is_refused(tmp_path):
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="not a readable parquet file"):
        load_preferences(fake)
    bomb = tmp_path / "bomb.parquet"  # one repeated 1 KiB answer: dictionary-encoded to a few KiB, 20 MiB once decoded
    pd.DataFrame([{**ROW, "chosen": "y" * 1024}] * 20_000).to_parquet(bomb)
    assert bomb.stat().st_size < 2**20
    with pytest.raises(DataError, match="expands beyond 1 MiB when decoded"):
        load_preferences(bomb, max_bytes=2**20)


def test_a_csv_with_a_huge_field_loads_whole(tmp_path):
    path = tmp_path / "huge.csv"
    pd.DataFrame([{**ROW, "chosen": "y" * 5_000_000}]).to_csv(path, index=False)
    assert len(load_preferences(path).pairs[0].chosen) == 5_000_000


def test_a_gzip_of_many_tiny_rows_is_refused_at_max_rows_before_they_fill_memory(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps(ROW) + "\n").encode() * 200_000))  # ~9 MiB of rows in ~30 KiB
    error, peak = refusal_and_peak(path, max_rows=1000)
    assert str(error) == (f"{path}: has more than 1,000 rows (the max_rows limit). "
                          "Fix: split it into smaller files, or raise max_rows if you trust the file.")
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB: the loader parsed far past max_rows before refusing"


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_file_type_holds_max_rows_and_refuses_one_more(tmp_path, suffix):
    path = tmp_path / f"rows{suffix}"
    frame = pd.DataFrame([ROW] * 11)
    {".jsonl": lambda: frame.to_json(path, orient="records", lines=True), ".json": lambda: frame.to_json(path, orient="records"),
     ".csv": lambda: frame.to_csv(path, index=False), ".parquet": lambda: frame.to_parquet(path)}[suffix]()
    assert len(load_preferences(path, max_rows=11)) == 11
    with pytest.raises(DataError, match="has more than 10 rows"):
        load_preferences(path, max_rows=10)


def test_an_upload_under_an_earlier_name_never_replaces_the_earlier_file(tmp_path):
    from reform_engine.data import save_upload

    first, second = (f'{{"prompt": "Hi?", "chosen": "Hello {i}!", "rejected": "Go away."}}\n'.encode() for i in (1, 2))
    a = save_upload("pairs.jsonl", first, tmp_path)
    b = save_upload("pairs.jsonl", second, tmp_path)
    assert a != b and a.read_bytes() == first and b.read_bytes() == second
    assert save_upload("pairs.jsonl", first, tmp_path) == a and sorted(p.name for p in tmp_path.iterdir()) == sorted([a.name, b.name])


def test_upload_names_are_cut_to_fit_and_keep_their_extension(tmp_path):
    from reform_engine.data import UPLOAD_NAME_CHARS, load_preferences, save_upload, upload_file_name

    row = b'{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}\n'
    name = upload_file_name("x" * 300 + ".jsonl.gz", row)
    assert name == "8a40d9df3a32d283-" + "x" * (UPLOAD_NAME_CHARS - len(".jsonl.gz")) + ".jsonl.gz"
    assert upload_file_name("é" * 300 + ".JSON", b"") == "e3b0c44298fc1c14-" + "_" + ".JSON"  # a run of unsafe characters is one '_'
    path = save_upload("y" * 300 + ".jsonl", row, tmp_path)
    assert len(path.name) == 17 + UPLOAD_NAME_CHARS and path.name.endswith("y.jsonl") and len(load_preferences(path)) == 1


def test_a_random_fold_and_its_complement_split_the_rows_without_overlap_and_fix_each_row():
    from reform_engine.data import fold_of, parse_rows

    pairs = [PreferencePair(f"f:{i}", ({"role": "user", "content": "q"},), "a", "b") for i in range(1000)]
    folds = [{p.pair_id for p in select_rows(pairs, f"fold={k}/5")} for k in range(5)]
    assert sum(len(f) for f in folds) == 1000 and set().union(*folds) == {p.pair_id for p in pairs}
    assert all(170 <= len(f) <= 230 for f in folds)          # random, not contiguous: sizes near 200
    assert folds[0] != {f"f:{i}" for i in range(200)}
    rest = {p.pair_id for p in select_rows(pairs, "fold!=0/5")}
    assert rest == {p.pair_id for p in pairs} - folds[0]
    # a row's fold depends on the row and the draw only: the same in a shorter file, different in draw 1
    assert {p.pair_id for p in select_rows(pairs[:100], "fold=0/5")} == {i for i in folds[0] if int(i[2:]) < 100}
    assert [fold_of(r, 5) for r in range(20)] != [fold_of(r, 5, seed=1) for r in range(20)]
    assert parse_rows("fold=2/5@1").complement() == "fold!=2/5@1"
    assert parse_rows("fold!=2/5").complement() == "fold=2/5@0"
    assert parse_rows("0:132").complement() == "132:" and parse_rows("").complement() == ""


def test_a_bad_fold_spec_says_how_to_write_one():
    pairs = [PreferencePair("f:0", ({"role": "user", "content": "q"},), "a", "b")]
    for spec in ("fold=5/5", "fold=0/1", "fold=a/5"):
        with pytest.raises(ValueError, match="fold"):
            select_rows(pairs, spec)


def test_an_empty_source_asks_for_a_path_instead_of_reading_the_current_directory():
    with pytest.raises(DataError) as info:
        load_preferences("  ")
    assert str(info.value) == ("no data file given. Fix: enter a path to a .jsonl, .jsonl.gz, .json, .parquet or .csv file "
                               "(or a hub dataset id).")


def test_columns_that_are_not_ours_raise_a_column_error_the_app_can_recognise():
    from reform_engine.data import ColumnError

    with pytest.raises(ColumnError, match=r"missing column\(s\) \['chosen', 'rejected'\]"):
        pairs_from_rows([{"question": "Q", "good": "A", "bad": "B"}], "f.jsonl")


def test_column_map_of_maps_the_files_names_to_ours_and_refuses_one_column_twice():
    from reform_engine.data import column_map_of

    assert column_map_of(prompt="question", chosen=" good ", rejected="") == {"question": "prompt", "good": "chosen"}
    assert column_map_of(prompt="prompt", chosen="", rejected="") == {}
    with pytest.raises(DataError, match="mapped to two of ours"):
        column_map_of(prompt="", chosen="answer", rejected="answer")


def test_save_mapped_writes_the_renamed_rows_keeping_row_numbers_and_writes_nothing_for_a_bad_map(tmp_path):
    from reform_engine.data import save_mapped

    src = tmp_path / "pairs.csv"
    src.write_text("question,good,bad\nQ1?,Yes.,No.\nQ2?,Same,Same\nQ3?,Fine.,Bad.\n")
    out = save_mapped(src, {"question": "prompt", "good": "chosen", "bad": "rejected"}, tmp_path / "uploads")
    assert out.parent == tmp_path / "uploads" and out.name.endswith("-pairs.mapped.jsonl")
    data = load_preferences(out, skip_invalid=True)
    assert [(p.pair_id, p.chosen) for p in data.pairs] == [(f"{out.name}:0", "Yes."), (f"{out.name}:2", "Fine.")]
    assert data.report.skipped[0][0] == 2
    assert save_mapped(src, {"question": "prompt", "good": "chosen", "bad": "rejected"}, tmp_path / "uploads") == out
    with pytest.raises(DataError, match="missing column"):
        save_mapped(src, {"question": "prompt"}, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_a_hub_dataset_id_offline_is_refused_at_once_naming_the_reason(monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: pytest.fail("the hub must not be asked"))
    with pytest.raises(DataError) as info:
        load_preferences("no-such-org/no-such-set")
    assert str(info.value) == ("no-such-org/no-such-set: no such local file, and as a hub dataset id it is not in the local "
                               "cache while the hub cannot be reached (HF_HUB_OFFLINE is set). Fix: check the path, or "
                               "download the dataset where there is a network and give its local file.")


def test_split_rows_trains_on_the_first_80_percent_and_holds_out_the_rest():
    from reform_engine.data import DEMO_PATH, split_rows

    pairs = load_preferences(str(DEMO_PATH)).pairs
    assert split_rows(pairs) == ("0:132", "132:165")
    assert split_rows(select_rows(pairs, "10:20")) == ("10:18", "18:20")
    assert split_rows(pairs[:2]) == ("0:1", "1:2")
    with pytest.raises(DataError, match="1 pair\\(s\\) cannot be split"):
        split_rows(pairs[:1])
    with pytest.raises(ValueError, match="train_share=1"):
        split_rows(pairs, 1)


def test_overlapping_rows_knows_ranges_and_random_folds():
    from reform_engine.data import overlapping_rows

    assert overlapping_rows("0:132", "132:") == "" and overlapping_rows("0:132", "100:") == "100:132"
    assert overlapping_rows("fold!=0/5", "fold=0/5") == "" and overlapping_rows("fold=1/5@2", "fold=3/5@2") == ""
    assert overlapping_rows("fold!=0/5", "fold=1/5") == "those in both fold!=0/5 and fold=1/5"
    assert overlapping_rows("fold!=0/5@1", "fold=0/5") != ""          # another draw: the folds cross
    assert overlapping_rows("fold=0/5", "0:100") == "those in both fold=0/5 and 0:100"
