"""Data the benchmarks read from outside the repository (the engine itself names no such path)."""
from pathlib import Path

# The shared Anthropic HH-RLHF harmless dev file, kept read-only in ../shared beside the repo, never copied in.
HH_DEV_PATH = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hh-rlhf-harmless" / "dev.jsonl.gz"
