import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# REFORM_TEST_THREADS=1 lets two test runs share this 2-core machine without collapsing each other.
torch.set_num_threads(int(os.environ.get("REFORM_TEST_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))

from reform_engine.data import PreferencePair  # noqa: E402
from reform_engine.reward_model import RewardModelSpec, build_reward_model  # noqa: E402
from reform_engine.tiny import save_tiny_model  # noqa: E402

# The shared HH dev file, read-only in ../shared beside the repo (never copied in); tests that need it skip without it.
HH_DEV_PATH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless" / "dev.jsonl.gz"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer random Llama + byte tokenizer saved as an ordinary model directory."""
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture()
def tiny_rm(tiny_model_dir):
    spec = RewardModelSpec(base_model=tiny_model_dir, finetune="full", max_length=256)
    return build_reward_model(spec, device="cpu", seed=0).eval()


@pytest.fixture(scope="session")
def hh_dev_path() -> Path:
    if not HH_DEV_PATH.is_file():
        pytest.skip(f"shared HH dev data not found at {HH_DEV_PATH}; place ../shared beside the repo to run this test")
    return HH_DEV_PATH


def make_pair(i: int, prompt: str, chosen: str, rejected: str) -> PreferencePair:
    return PreferencePair(f"t:{i}", ({"role": "user", "content": prompt},), chosen, rejected)


@pytest.fixture()
def toy_pairs():
    """Trivially separable: the chosen response is polite, the rejected one is rude."""
    asks = ["Can you help me?", "What time is it?", "Tell me a fact.", "How do I cook rice?", "Where is Paris?",
            "Name a colour.", "What is 2+2?", "Say something nice."]
    return [make_pair(i, a, "Sure, happy to help.", "No. Go away!!") for i, a in enumerate(asks)]
