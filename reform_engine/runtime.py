"""Where and how a job runs: its ``Runtime`` (device, dtype, threads, seed, remote-code leave), which
every job config holds as ``runtime`` and every job takes from there, never from a constant."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from .trunk_cache import DEFAULT_CAP_GB, check_setting

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Runtime fields a reused stage may differ in (stages.py): where and how it ran, not what it computed
PLACEMENT = ("device", "dtype", "threads", "trust_remote_code", "trunk_cache", "trunk_cache_gb")


@dataclass
class Runtime:
    """The runtime of one job: ``--runtime.device cpu --runtime.seed 3`` on the command line."""

    device: str = field(default="auto", metadata={"help": "torch device: 'auto' picks cuda, then mps, then cpu; or 'cpu', "
                                                          "'cuda', 'cuda:N'"})
    dtype: str = field(default="float32", metadata={"help": "weights' dtype; float32: bfloat16 brings no speed-up on a CPU",
                                                    "choices": tuple(DTYPES)})
    threads: int = field(default=0, metadata={"help": "torch threads of the job (0 = torch's default: every core)"})
    seed: int = field(default=0, metadata={"help": "seeds whatever the job draws: model init and data order, random "
                                                   "selections, sampling, perturbations"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "let Python code shipped with a model (auto_map) run: only for models you trust; the only way to allow it "
                "(a checkpoint cannot allow itself)"})
    trunk_cache: str = field(default="auto", metadata={
        "help": "hidden states of a reward model's frozen lower layers, computed once (trunk_cache.py), for the jobs that "
                "score or train one: 'auto' = run_dir/trunk_cache plus the reward model's run's, 'off', or directories "
                "(the first written, the rest read)"})
    trunk_cache_gb: float = field(default=DEFAULT_CAP_GB, metadata={
        "help": "cap on what the job writes to the trunk cache; past it states are recomputed, not stored"})

    def __post_init__(self):
        if self.device != "auto":
            resolve_device(self.device)
        resolve_dtype(self.dtype)
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads={self.threads!r}: use 0 for torch's default or a count >= 1")
        check_setting(self.trunk_cache, self.trunk_cache_gb)

    def trunk_args(self) -> dict:
        """The keyword arguments of trunk_cache.open_trunk_cache: the setting and the cap."""
        return {"setting": self.trunk_cache, "cap_gb": self.trunk_cache_gb}

    def load_args(self) -> dict:
        """The keyword arguments every model loader takes from the runtime: device, dtype, trust_remote_code."""
        return {"device": self.device, "dtype": self.dtype, "trust_remote_code": self.trust_remote_code}


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; anything else is passed to torch.device as given."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device={device!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator for data order so it does not depend on model init."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_cpu_threads(n: int | None) -> None:
    """Cap intra-op threads (jobs leave a core to the app); None keeps torch's default."""
    if n:
        torch.set_num_threads(max(1, int(n)))


def cache_dir() -> str:
    """Where converted models live; REFORM_CACHE overrides (CI and tests point it at a shared place)."""
    return os.environ.get("REFORM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "reform")
