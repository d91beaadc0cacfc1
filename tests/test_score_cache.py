import hashlib
import json

import pytest
import torch

from reform_engine import score_cache
from reform_engine.data import write_jsonl
from reform_engine.reward_model import RewardModelSpec, build_reward_model
from reform_engine.score_cache import (ScoreKey, data_fingerprint, file_digest, load_scores, model_fingerprint, read_key,
                                       save_scores, score_key, write_key)
from reform_engine.scoring import PairScores, score_pairs
from reform_engine.store import Store


def demo_file(path, n: int = 4, word: str = "good"):
    write_jsonl(path, [{"prompt": f"question {i}", "chosen": f"a {word} answer {i}", "rejected": f"no {i}"} for i in range(n)])
    return path


@pytest.fixture()
def saved_rm(tiny_model_dir, tmp_path):
    rm = build_reward_model(RewardModelSpec(base_model=tiny_model_dir, finetune="full", max_length=256), device="cpu", seed=0)
    return rm.eval(), str(rm.save(tmp_path / "rm"))


def test_a_file_digest_is_its_sha256_and_follows_a_rewrite(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"abc")
    assert file_digest(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    f.write_bytes(b"abcd")  # another size: another stat, read again
    assert file_digest(f) == "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"


def test_the_data_fingerprint_follows_content_rows_and_skip_setting_not_the_file_name(tmp_path):
    a, b = demo_file(tmp_path / "a.jsonl"), demo_file(tmp_path / "b.jsonl")
    other = demo_file(tmp_path / "c.jsonl", word="fine")
    fp = data_fingerprint(str(a), "0:2", True)
    assert fp == data_fingerprint(str(b), "0:2", True)
    assert len({fp, data_fingerprint(str(other), "0:2", True), data_fingerprint(str(a), "0:3", True),
                data_fingerprint(str(a), "0:2", False)}) == 4
    assert data_fingerprint("org/some-hub-dataset", "", True) is None


def test_the_rm_fingerprint_changes_when_the_checkpoint_is_retrained_in_place(saved_rm, tiny_model_dir, tmp_path):
    _, path = saved_rm
    before = model_fingerprint(path)
    assert before == model_fingerprint(path) and len(before) == 64
    again = build_reward_model(RewardModelSpec(base_model=tiny_model_dir, finetune="full", max_length=256), device="cpu", seed=1)
    again.save(path)  # a new head at the same path
    assert model_fingerprint(path) != before
    assert model_fingerprint(str(tmp_path / "missing")) is None


def test_a_lora_checkpoint_fingerprint_covers_its_base_model(tmp_path):
    from reform_engine.tiny import save_tiny_model

    base = save_tiny_model(tmp_path / "base")
    rm = build_reward_model(RewardModelSpec(base_model=str(base), finetune="lora", max_length=256), device="cpu", seed=0)
    path = str(rm.save(tmp_path / "rm"))
    before = model_fingerprint(path)
    (base / "config.json").write_text((base / "config.json").read_text() + " ")
    assert model_fingerprint(path) != before


def test_scores_saved_under_a_key_read_back_exactly_and_a_revisit_scores_nothing(saved_rm, toy_pairs, tmp_path):
    rm, path = saved_rm
    data = demo_file(tmp_path / "d.jsonl")
    store = Store(tmp_path / "r.duckdb")
    key = score_key(path, str(data), "", True, 256)
    assert key == ScoreKey(model_fingerprint(path), data_fingerprint(str(data), "", True), "", 256)
    assert load_scores(store, key, toy_pairs) is None
    scores = score_pairs(rm, toy_pairs, max_length=256, skip_too_long=True)
    save_scores(store, key, toy_pairs, scores)
    back = load_scores(store, key, toy_pairs)
    assert torch.equal(back.r_chosen, scores.r_chosen) and torch.equal(back.r_rejected, scores.r_rejected)
    assert (back.skipped, back.truncated) == ((), 0)
    assert load_scores(store, ScoreKey(key.rm, key.data, "", 512), toy_pairs) is None  # another scoring length
    assert load_scores(store, key, toy_pairs[:-1]) is None  # other pairs under the same key


def test_skipped_pairs_are_kept_with_the_scores(toy_pairs, tmp_path):
    store = Store(tmp_path / "r.duckdb")
    key = ScoreKey("rm", "data", "0:8", 64)
    scores = PairScores(torch.tensor([0.5] * 7), torch.tensor([-0.25] * 7), 3, (2,))
    save_scores(store, key, toy_pairs, scores)
    back = load_scores(store, key, toy_pairs)
    assert (back.r_chosen.tolist(), back.r_rejected.tolist(), back.truncated, back.skipped) == ([0.5] * 7, [-0.25] * 7, 3, (2,))


def stored_row(store, key):
    return store.get_score_set(key.digest)


@pytest.mark.parametrize("damage", ["payload", "format", "json", "lengths"])
def test_a_damaged_or_older_score_set_is_a_miss_not_a_crash(toy_pairs, tmp_path, damage):
    store = Store(tmp_path / "r.duckdb")
    key = ScoreKey("rm", "data", "", 64)
    save_scores(store, key, toy_pairs, PairScores(torch.zeros(8), torch.ones(8), 0))
    row = stored_row(store, key)
    fields = {k: row[k] for k in ("rm_fingerprint", "data_fingerprint", "row_range", "max_length", "format", "n_pairs",
                                  "checksum", "payload")}
    if damage == "payload":
        fields["payload"] = row["payload"].replace("0.0", "0.5", 1)  # checksum no longer matches
    elif damage == "format":
        fields["format"] = score_cache.FORMAT - 1
    else:
        payload = "{not json" if damage == "json" else json.dumps({**json.loads(row["payload"]), "r_chosen": [0.0] * 3})
        fields.update(payload=payload, checksum=hashlib.sha256(payload.encode()).hexdigest())
    store.put_score_set(key.digest, **fields)
    assert load_scores(store, key, toy_pairs) is None


def test_a_key_file_reads_back_and_one_of_another_format_is_none(tmp_path):
    key = ScoreKey("r" * 64, "d" * 64, "0:5", 128)
    write_key(tmp_path, key)
    assert read_key(tmp_path) == key
    (tmp_path / score_cache.KEY_FILE).write_text(json.dumps({**key.to_dict(), "format": 0}))
    assert read_key(tmp_path) is None
    assert read_key(tmp_path / "nowhere") is None
