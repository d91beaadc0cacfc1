import json

import pytest
import torch

from conftest import make_pair
from reform_engine.data import write_jsonl
from reform_engine.influence import InfluenceConfig, find_influential, rank_pairs, select_influential
from reform_engine.runtime import Runtime
from reform_engine.scoring import PairScores

PAIRS = [make_pair(i, f"q{i}", f"good {i}", f"bad {i}") for i in range(10)]
# margins 3, -1, 0.5, 2, -2, 1, 0, 4, -3, 1  -> loss ascending: 7, 0, 3, 5, 9, 2, 6, 1, 4, 8
SCORES = PairScores(torch.tensor([3.0, -1, 0.5, 2, -2, 1, 0, 4, -3, 1]), torch.zeros(10), 0)


def test_rank_pairs_orders_by_bradley_terry_loss():
    scored = rank_pairs(PAIRS, SCORES)
    assert [s.rank for s in scored] == [2, 8, 6, 3, 9, 4, 7, 1, 10, 5]
    assert scored[7].loss == pytest.approx(0.0181499, abs=1e-6)  # -log sigmoid(4)


def test_lowest_highest_and_random_selections():
    scored = rank_pairs(PAIRS, SCORES)
    assert [s.pair.pair_id for s in select_influential(scored, 0.2)] == ["t:7", "t:0"]
    assert [s.pair.pair_id for s in select_influential(scored, 0.2, "highest_loss")] == ["t:8", "t:4"]
    rand = select_influential(scored, 0.3, "random", seed=1)
    assert len(rand) == 3 and rand == select_influential(scored, 0.3, "random", seed=1)
    assert len(select_influential(scored, 0.01)) == 1  # never empty: at least one pair


@pytest.mark.parametrize("kwargs,needle", [({"fraction": 0}, r"\(0, 1\]"), ({"fraction": 1.5}, r"\(0, 1\]"),
                                           ({"strategy": "median"}, "use one of")])
def test_bad_selection_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        select_influential(rank_pairs(PAIRS, SCORES), **kwargs)


def test_find_influential_job_writes_tables(tiny_rm, toy_pairs, tmp_path):
    tiny_rm.save(tmp_path / "rm")
    write_jsonl(tmp_path / "d.jsonl", [p.to_trl() for p in toy_pairs])
    res = find_influential(InfluenceConfig(reward_model=str(tmp_path / "rm"), data=str(tmp_path / "d.jsonl"), fraction=0.25,
                                           runtime=Runtime(device="cpu")), tmp_path / "run")
    assert (res.n_scored, res.n_selected) == (8, 2)
    rows = [json.loads(line) for line in open(res.selected_path)]
    assert [r["rank"] for r in rows] == [1, 2] and res.mean_loss_selected <= res.mean_loss_all
    assert set(rows[0]) == {"pair_id", "prompt", "chosen", "rejected", "r_chosen", "r_rejected", "margin", "loss", "rank"}


def test_influential_job_skips_an_over_long_pair_counts_it_and_variants_read_the_ranking(tiny_rm, toy_pairs, tmp_path):
    from conftest import make_pair
    from reform_engine.data import load_preferences
    from reform_engine.influence import load_scored

    tiny_rm.save(tmp_path / "rm")
    pairs = toy_pairs + [make_pair(99, "Q", "y" * 300, "n")]
    write_jsonl(tmp_path / "d.jsonl", [p.to_trl() for p in pairs])
    res = find_influential(InfluenceConfig(reward_model=str(tmp_path / "rm"), data=str(tmp_path / "d.jsonl"), fraction=0.25,
                                           max_length=100, runtime=Runtime(device="cpu")), tmp_path / "run")
    assert (res.n_scored, res.n_skipped, res.n_selected) == (8, 1, 2)
    assert [json.loads(line)["pair_id"] for line in open(tmp_path / "run" / "skipped.jsonl")] == ["d.jsonl:8"]
    loaded = load_scored(load_preferences(tmp_path / "d.jsonl").pairs, res.scored_path)  # a later variants job leaves it out too
    assert [s.pair.pair_id for s in loaded] == [f"d.jsonl:{i}" for i in range(8)]


def test_influence_right_after_training_reads_the_training_cache_and_scores_as_uncached(tiny_model_dir, toy_pairs, tmp_path):
    from reform_engine.reward_model import RewardModelSpec
    from reform_engine.training import TrainRewardConfig, train_reward_model

    write_jsonl(tmp_path / "d.jsonl", [p.to_trl() for p in toy_pairs])
    spec = RewardModelSpec(base_model=tiny_model_dir, lora_r=4, lora_alpha=8, lora_layers=1, max_length=128)
    trained = train_reward_model(TrainRewardConfig(model=spec, data=str(tmp_path / "d.jsonl"), batch_size=4, epochs=1,
                                                   runtime=Runtime(device="cpu")), tmp_path / "train")
    runs = {}
    for setting in ("auto", "off"):
        runs[setting] = find_influential(InfluenceConfig(reward_model=trained.checkpoint, data=str(tmp_path / "d.jsonl"),
                                                         runtime=Runtime(device="cpu", trunk_cache=setting)), tmp_path / setting)
    cached, cold = ([json.loads(line) for line in open(runs[s].scored_path)] for s in ("auto", "off"))
    assert [r["rank"] for r in cached] == [r["rank"] for r in cold]
    torch.testing.assert_close(torch.tensor([[r["r_chosen"], r["r_rejected"]] for r in cached]),
                               torch.tensor([[r["r_chosen"], r["r_rejected"]] for r in cold]), atol=1e-5, rtol=0)
    # every state comes from the training run's files; the influence run writes none of its own
    assert {k: runs["auto"].trunk_cache[k] for k in ("hits", "misses", "written_bytes")} == {"hits": 24, "misses": 0, "written_bytes": 0}
    assert not (tmp_path / "auto" / "trunk_cache").exists()
