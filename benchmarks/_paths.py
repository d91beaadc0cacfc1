"""Data the benchmarks read from outside the repository (the engine itself names no such path)."""
from pathlib import Path

# The shared Anthropic HH-RLHF harmless dev file, kept read-only in ../shared beside the repo, never copied in.
HH_DEV_PATH = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hh-rlhf-harmless" / "dev.jsonl.gz"


def bench_data() -> Path:
    """The data a benchmark reads unless told otherwise: the HH dev file, or where it is missing the
    repo's small demo set (the script still runs, on less)."""
    from reform_engine.data import DEMO_PATH

    return HH_DEV_PATH if HH_DEV_PATH.is_file() else DEMO_PATH
