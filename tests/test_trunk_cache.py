import json

import numpy as np
import pytest
import torch

from reform_engine.reward_model import RewardModelSpec, build_reward_model
from reform_engine.scoring import encode, encode_pairs, score_encoded_groups, score_sequences
from reform_engine.tiny import save_tiny_model
from reform_engine.trunk_cache import TrunkStore, entry_key, namespace, open_trunk_cache, trunk_split


def lora_rm(model_dir, seed=0, layers=1, finetune="lora"):
    spec = RewardModelSpec(base_model=model_dir, finetune=finetune, lora_r=4, lora_alpha=8, lora_layers=layers, max_length=256)
    return build_reward_model(spec, device="cpu", seed=seed).eval()


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory) -> str:
    """The tiny model's architecture with other random weights."""
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-other"), seed=1))


def groups_of(rm, pairs, max_length=256):
    return [list(g) for g in encode_pairs(rm, pairs, max_length=max_length)]


def whole(rm, groups):
    return [score_sequences(rm, [e.ids for e in g], bucket=False).tolist() for g in groups]


def test_split_is_the_first_adapted_layer_and_head_only_caches_every_layer(tiny_model_dir):
    assert trunk_split(lora_rm(tiny_model_dir, layers=1)) == (1, "")
    assert trunk_split(lora_rm(tiny_model_dir, finetune="head")) == (2, "")


def test_full_fine_tuning_lora_on_every_layer_and_other_models_bypass(tiny_model_dir, tiny_rm, tmp_path):
    assert trunk_split(tiny_rm) == (None, "full fine-tuning: nothing is frozen")
    assert trunk_split(lora_rm(tiny_model_dir, layers=None)) == (None, "nothing frozen below the first trainable layer (LoRA on every layer)")
    assert trunk_split(lora_rm(tiny_model_dir, layers=2)) == (None, "nothing frozen below the first trainable layer (LoRA on every layer)")
    cache, note = open_trunk_cache(tiny_rm, "auto", tmp_path)
    assert cache is None and note == "trunk cache: bypassed (full fine-tuning: nothing is frozen)"
    assert not (tmp_path / "trunk_cache").exists()


def test_a_decoder_the_layer_stack_does_not_understand_bypasses(tmp_path):
    from transformers import GPT2Config, GPT2Model

    from reform_engine.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    GPT2Model(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4)).save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    rm = lora_rm(str(tmp_path / "gpt2"), finetune="head")
    assert trunk_split(rm) == (None, "not a Llama-style decoder with sdpa/eager attention")


def test_cached_scores_equal_uncached_and_a_second_pass_only_reads(tiny_model_dir, toy_pairs, tmp_path):
    rm = lora_rm(tiny_model_dir)
    groups = groups_of(rm, toy_pairs)
    cache, _ = open_trunk_cache(rm, "auto", tmp_path)
    first = score_encoded_groups(rm, groups, batch_size=8, trunk=cache)
    assert cache.summary()["misses"] == 24 and cache.summary()["hits"] == 0  # 8 prompts + 16 responses
    second = score_encoded_groups(rm, groups, batch_size=8, trunk=cache)
    assert cache.summary()["hits"] == 24 and cache.summary()["entries"] == 24
    reference = whole(rm, groups)
    torch.testing.assert_close(torch.tensor(first), torch.tensor(reference), atol=1e-5, rtol=0)
    assert second == first


def test_another_model_on_the_same_trunk_hits_other_weights_or_split_miss(tiny_model_dir, other_model_dir, toy_pairs, tmp_path):
    base = lora_rm(tiny_model_dir)
    groups = groups_of(base, toy_pairs)
    cache, _ = open_trunk_cache(base, "auto", tmp_path)
    score_encoded_groups(base, groups, trunk=cache)
    cache.close()
    cases = {"same trunk, other LoRA and head": lora_rm(tiny_model_dir, seed=5),
             "other backbone weights": lora_rm(other_model_dir),
             "other split (head-only)": lora_rm(tiny_model_dir, finetune="head")}
    hits = {}
    for name, rm in cases.items():
        c, _ = open_trunk_cache(rm, "auto", tmp_path)
        got = score_encoded_groups(rm, groups, trunk=c)
        torch.testing.assert_close(torch.tensor(got), torch.tensor(whole(rm, groups)), atol=1e-5, rtol=0)
        hits[name] = (c.summary()["hits"], c.summary()["misses"])
    assert hits == {"same trunk, other LoRA and head": (24, 0), "other backbone weights": (0, 24),
                    "other split (head-only)": (0, 24)}


def test_a_changed_frozen_weight_is_another_namespace(tiny_model_dir):
    rm = lora_rm(tiny_model_dir)
    before = namespace(rm, 1)
    with torch.no_grad():
        rm.backbone.base_model.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert namespace(rm, 1)["weights"] != before["weights"]
    assert {k for k in before if before[k] != namespace(rm, 1)[k]} == {"weights"}


def test_a_different_truncation_misses_and_each_scores_as_uncached(tiny_model_dir, tmp_path):
    from tests.conftest import make_pair

    rm = lora_rm(tiny_model_dir)
    pair = make_pair(0, "a long question " * 6, "Sure.", "No.")
    cut, full = groups_of(rm, [pair], max_length=60), groups_of(rm, [pair], max_length=256)
    assert cut[0][0].prompt_truncated and not full[0][0].prompt_truncated
    cache, _ = open_trunk_cache(rm, "auto", tmp_path)
    got_cut = score_encoded_groups(rm, cut, trunk=cache)
    got_full = score_encoded_groups(rm, full, trunk=cache)
    # cut: the two sides' prompts are cut to different lengths (2 prompts + 2 responses); whole: 1 + 2
    assert (cache.summary()["hits"], cache.summary()["misses"]) == (0, 7)
    torch.testing.assert_close(torch.tensor(got_cut + got_full), torch.tensor(whole(rm, cut) + whole(rm, full)), atol=1e-5, rtol=0)


def test_same_ids_with_another_truncation_flag_are_another_entry(tiny_model_dir):
    rm = lora_rm(tiny_model_dir)
    e = encode(rm.tokenizer, [{"role": "user", "content": "Hi"}], "Hello", max_length=256)
    flagged = type(e)(e.ids, e.response_start, True)
    assert not np.array_equal(entry_key(e), entry_key(flagged))
    assert np.array_equal(entry_key(e)[3:], np.asarray(e.ids))


def test_over_the_cap_states_are_used_but_not_stored(tiny_model_dir, toy_pairs, tmp_path):
    rm = lora_rm(tiny_model_dir)
    groups = groups_of(rm, toy_pairs)
    cap_gb = 10_000 / 2**30
    cache, _ = open_trunk_cache(rm, "auto", tmp_path, cap_gb=cap_gb)
    got = score_encoded_groups(rm, groups, trunk=cache)
    again = score_encoded_groups(rm, groups, trunk=cache)
    s = cache.summary()
    assert 0 < s["written_bytes"] <= 10_000 and s["not_stored_over_cap"] > 0 and s["hits"] == s["entries"]
    data = sum(p.stat().st_size for p in (tmp_path / "trunk_cache").rglob("*.bin"))
    assert data == s["written_bytes"]
    torch.testing.assert_close(torch.tensor(got + again), torch.tensor(whole(rm, groups) * 2), atol=1e-5, rtol=0)


def test_writers_in_one_directory_see_each_others_entries_after_refresh(tmp_path):
    meta = {"format": 1, "dtype": "torch.float32", "hidden": 2, "layers": 2}
    a, b = TrunkStore(meta, tmp_path), TrunkStore(meta, tmp_path)
    key = np.asarray([0, 2, 0, 5, 6], dtype=np.int32)
    a.put(key, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert b.get(key) is None
    b.refresh()
    assert b.get(key).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert TrunkStore({**meta, "layers": 3}, tmp_path).get(key) is None  # another namespace


def test_a_torn_index_record_or_a_foreign_meta_is_ignored(tmp_path):
    meta = {"format": 1, "dtype": "torch.float32", "hidden": 1, "layers": 2}
    store = TrunkStore(meta, tmp_path)
    keys = [np.asarray([0, 1, 0, i], dtype=np.int32) for i in range(2)]
    for i, k in enumerate(keys):
        store.put(k, torch.tensor([[float(i)]]))
    store.close()
    (idx,) = (tmp_path / store.name).glob("part-*.idx")
    idx.write_bytes(idx.read_bytes()[:-5])  # a writer killed halfway through its second record
    reader = TrunkStore(meta, None, [tmp_path])
    assert reader.get(keys[0]).tolist() == [[0.0]] and reader.get(keys[1]) is None
    (tmp_path / store.name / "meta.json").write_text(json.dumps({**meta, "hidden": 7}))
    assert len(TrunkStore(meta, None, [tmp_path]).index) == 0


def test_a_checkpoints_cache_is_where_its_runs_runtime_put_it(tmp_path):
    from reform_engine.runs import atomic_write_json
    from reform_engine.runtime import Runtime
    from reform_engine.training import TrainRewardConfig
    from reform_engine.trunk_cache import run_cache_dirs

    (tmp_path / "base" / "checkpoint").mkdir(parents=True)
    shared = tmp_path / "pipeline-cache"  # a pipeline's base stage writes to the pipeline's one cache
    atomic_write_json(tmp_path / "base" / "config.json", TrainRewardConfig(runtime=Runtime(trunk_cache=f"{shared},{tmp_path}/old")))
    assert run_cache_dirs(tmp_path / "base" / "checkpoint") == [shared, tmp_path / "old"]
    atomic_write_json(tmp_path / "base" / "config.json", {"lr": 1e-4, "trunk_cache": str(shared)})  # a flat one, from before
    assert run_cache_dirs(tmp_path / "base" / "checkpoint") == [shared]
    atomic_write_json(tmp_path / "base" / "config.json", TrainRewardConfig())
    assert run_cache_dirs(tmp_path / "base" / "checkpoint") == [tmp_path / "base" / "trunk_cache"]


def test_cut_files_or_an_unwritable_directory_cost_the_cache_not_the_scores(tiny_model_dir, toy_pairs, tmp_path):
    rm = lora_rm(tiny_model_dir)
    groups = groups_of(rm, toy_pairs)
    writer, _ = open_trunk_cache(rm, "auto", tmp_path / "a")
    score_encoded_groups(rm, groups, trunk=writer)
    writer.close()
    (tmp_path / "blocked").write_text("a file where the cache directory should be")
    cache, _ = open_trunk_cache(rm, f"{tmp_path / 'blocked'},{tmp_path / 'a' / 'trunk_cache'}", tmp_path)
    assert len(cache.store.index) == 24
    for data in (tmp_path / "a" / "trunk_cache").rglob("*.bin"):
        data.write_bytes(b"")  # someone clears the files after this job indexed them
    got = score_encoded_groups(rm, groups, trunk=cache)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(whole(rm, groups)), atol=1e-5, rtol=0)
    s = cache.summary()
    assert (s["hits"], s["misses"], s["written_bytes"], s["directory"]) == (0, 24, 0, "")
    blocked, _ = open_trunk_cache(rm, str(tmp_path / "blocked"), tmp_path)  # nothing to read, nowhere to write
    assert score_encoded_groups(rm, groups, trunk=blocked) == got


def test_usage_counts_each_trunks_entries_and_bytes_on_disk(tiny_model_dir, toy_pairs, tmp_path):
    from reform_engine.trunk_cache import RECORD, usage

    assert usage(tmp_path / "none") == []
    rm = lora_rm(tiny_model_dir)
    cache, _ = open_trunk_cache(rm, "auto", tmp_path)
    score_encoded_groups(rm, groups_of(rm, toy_pairs), batch_size=8, trunk=cache)
    summary = cache.summary()
    cache.close()
    (tmp_path / "trunk_cache" / "stray").mkdir()  # not a trunk: no meta.json
    [row] = usage(tmp_path / "trunk_cache")
    layers = rm.backbone.config.num_hidden_layers
    assert row["entries"] == summary["entries"] == 24 and row["cached_layers"] == f"0-{summary['split'] - 1} of {layers}"
    assert row["bytes"] == summary["written_bytes"] + 24 * RECORD.size  # the states and keys, plus the index records
