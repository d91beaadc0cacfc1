import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# REFORM_TEST_THREADS=1 lets two test runs share this 2-core machine without collapsing each other.
torch.set_num_threads(int(os.environ.get("REFORM_TEST_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))
# The app's CPU claims (reform_engine.cpu_share) of this test run stay its own: a developer's running app
# must not slow the tests' jobs, nor the tests' claims a real job beside them.
os.environ.setdefault("REFORM_CPU_DIR", tempfile.mkdtemp(prefix="reform-cpu-tests-"))

from reform_engine.data import PreferencePair  # noqa: E402
from reform_engine.reward_model import RewardModelSpec, build_reward_model  # noqa: E402
from reform_engine.tiny import save_tiny_model  # noqa: E402

# The shared HH dev file, read-only in ../shared beside the repo (never copied in); tests that need it skip without it.
HH_DEV_PATH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless" / "dev.jsonl.gz"


@pytest.fixture(autouse=True)
def main_module_restored():
    """AppTest runs a page as ``__main__`` and leaves it there; multiprocessing's spawn would then re-run
    that script (a temporary file, for AppTest.from_function) in every child process a later test starts."""
    main = sys.modules.get("__main__")
    yield
    if main is not None and sys.modules.get("__main__") is not main:
        sys.modules["__main__"] = main


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


def write_remote_code_model(directory: Path, marker: Path, *, tokenizer_only: bool = False) -> Path:
    """A tiny model directory that asks to run code shipped beside it: its config.json (or, with
    ``tokenizer_only``, its tokenizer_config.json) has an auto_map naming configuration_marker.py,
    which creates ``marker`` the moment it is imported."""
    import json

    save_tiny_model(directory)
    (directory / "configuration_marker.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('shipped code ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\nclass MarkerConfig(LlamaConfig):\n    pass\n\n\n"
        "class MarkerForCausalLM(LlamaForCausalLM):\n    config_class = MarkerConfig\n")
    name = "tokenizer_config.json" if tokenizer_only else "config.json"
    config = json.loads((directory / name).read_text())
    config["auto_map"] = {"AutoConfig": "configuration_marker.MarkerConfig",
                          "AutoModelForCausalLM": "configuration_marker.MarkerForCausalLM"} if not tokenizer_only else \
        {"AutoTokenizer": ["configuration_marker.MarkerConfig", None]}
    (directory / name).write_text(json.dumps(config))
    return directory


@pytest.fixture()
def remote_code_model(tmp_path) -> tuple[Path, Path]:
    """-> (a model directory whose config.json asks to run its shipped configuration_marker.py, the
    marker file that code would create)."""
    marker = tmp_path / "MARKER-shipped-code-ran"
    return write_remote_code_model(tmp_path / "remote-code-model", marker), marker
