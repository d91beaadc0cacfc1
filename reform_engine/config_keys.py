"""When a saved run is the same job as the one about to run: the rule every resume and reuse follows.

A job records what it ran with as JSON (a stage's ``config.json``, a decoding journal's header, a training or RL
snapshot's key). A later run of a config reuses that work when the two are the same job:

- placement aside: the ``runtime`` fields that move work, not results (device, dtype, threads, remote-code
  leave; ``runtime.PLACEMENT``), may differ; the seed may not;
- a setting added to the engine since the JSON was written, which the JSON therefore lacks, counts as equal
  while the config holds it at its default. A new setting's default keeps the old behaviour (that is the
  engine's rule for adding one), so work saved before it existed is still this job's. A setting the JSON
  has and the engine no longer knows makes it another job;
- a file or folder named two ways (relative to the working folder and absolute, or through a link) is one input:
  two strings that differ are equal when both name the same existing path.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .configs import field_default
from .runs import to_jsonable


def comparable(config: Any) -> Any:
    """A config (or a key holding configs) as JSON, without the placement fields of every ``runtime`` in it."""
    from .runtime import PLACEMENT

    data = to_jsonable(config)
    if not isinstance(data, dict):
        return data
    return {k: {f: x for f, x in v.items() if f not in PLACEMENT} if k == "runtime" and isinstance(v, dict) else comparable(v)
            for k, v in data.items()}


def known_to(previous: Any, current: Any) -> Any:
    """``current`` (a config, or a dict or list holding configs) as JSON, without the settings ``previous`` (its
    saved JSON) has no field for and ``current`` holds at their default."""
    if isinstance(current, dict) and isinstance(previous, dict):
        return {k: known_to(previous.get(k), v) for k, v in current.items()}
    if isinstance(current, (list, tuple)) and isinstance(previous, list) and len(current) == len(previous):
        return [known_to(p, c) for p, c in zip(previous, current)]
    data = to_jsonable(current)
    if not (dataclasses.is_dataclass(current) and isinstance(previous, dict) and isinstance(data, dict)):
        return data
    out = {}
    for f in dataclasses.fields(current):
        if f.name not in data:
            continue
        if f.name not in previous:
            default = field_default(f)
            if default is not dataclasses.MISSING and to_jsonable(default) == data[f.name]:
                continue
            out[f.name] = data[f.name]
        else:
            out[f.name] = known_to(previous[f.name], getattr(current, f.name))
    return out


def same_job(previous: Any, current: Any) -> bool:
    """Whether saved JSON ``previous`` records the job ``current`` (a config, or a key holding configs) describes."""
    return _same(comparable(previous), comparable(known_to(previous, current)))


def _same(a: Any, b: Any) -> bool:
    """JSON equality, but for two spellings of one existing path."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, str) and isinstance(b, str) and _same_path(a, b))


def _same_path(a: str, b: str) -> bool:
    if not a.strip() or not b.strip():
        return False
    try:
        pa, pb = Path(a).expanduser(), Path(b).expanduser()
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    except (OSError, ValueError):
        return False
