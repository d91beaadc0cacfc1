"""The demo RM shipped in data/demo_rm/ (its card is in data/README.md): it loads on the real offline
SmolLM2 it names, and reaches the card's accuracy on the demo rows it was not trained on (132:165).
Scoring is deterministic on CPU in float32, so the count of correct pairs is exact."""
import json

import pytest

from reform_engine.data import DEMO_PATH, load_preferences, select_rows
from reform_engine.evaluation import bootstrap_mean, pair_wins, pairwise_metrics
from reform_engine.models import ModelError, gguf_source
from reform_engine.reward_model import BACKBONE_FILE, DEMO_RM_PATH, load_reward_model
from reform_engine.scoring import SCORE_MAX_LENGTH, score_pairs

HELD_OUT = "132:165"
CORRECT = 29   # of 33: the card in data/README.md


@pytest.fixture(scope="module")
def smollm2():
    try:
        gguf_source()
    except ModelError as exc:
        pytest.skip(f"the offline SmolLM2 is not installed ({exc})")


def test_the_shipped_rm_is_an_adapter_and_a_head_naming_its_backbone():
    files = {p.relative_to(DEMO_RM_PATH).as_posix(): p.stat().st_size for p in DEMO_RM_PATH.rglob("*") if p.is_file()}
    assert set(files) == {"reward_model.json", "head.safetensors", BACKBONE_FILE, "adapter/adapter_config.json",
                          "adapter/adapter_model.safetensors"}
    assert sum(files.values()) < 8 * 2**20  # a few MB: no copy of the backbone
    assert json.loads((DEMO_RM_PATH / BACKBONE_FILE).read_text())["base_model"] == "smollm2-135m-instruct"
    config = json.loads((DEMO_RM_PATH.parent / "config.json").read_text())  # the run's config: what retrain reads
    assert (config["data"], config["train_rows"], config["eval_rows"]) == ("data/demo_pairs.jsonl", "0:132", HELD_OUT)


def test_the_shipped_rm_loads_and_reaches_its_stated_held_out_accuracy(smollm2):
    rm = load_reward_model(str(DEMO_RM_PATH), device="cpu", dtype="float32")
    pairs = select_rows(load_preferences(str(DEMO_PATH)).pairs, HELD_OUT)
    scores = score_pairs(rm, pairs, max_length=SCORE_MAX_LENGTH)
    wins = pair_wins(scores.r_chosen, scores.r_rejected)
    m = pairwise_metrics(scores.r_chosen, scores.r_rejected, pairs)
    assert (len(pairs), int(wins.sum())) == (33, CORRECT)
    interval = bootstrap_mean(wins)
    assert (round(interval.estimate, 3), round(interval.low, 3), round(interval.high, 3)) == (0.879, 0.758, 0.970)
    assert (round(m.longer_baseline, 3), round(m.shorter_baseline, 3)) == (0.515, 0.485)  # length alone: chance
