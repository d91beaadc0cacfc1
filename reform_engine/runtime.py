"""Device, dtype and seed: the three things every job takes from its config, never from a constant."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
