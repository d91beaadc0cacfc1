"""Resuming a long job where it stopped: each finished unit of its work (a batch of decoded variants,
say) is appended to a JSONL file in the run directory as it finishes, under a key that says which job
made it (its config and its inputs). A rerun of the same job (config_keys.same_job: placement aside, and
settings added to the engine since at their defaults) in the same directory reads the units back and does
only the rest; a rerun of another config starts the file anew.

Why a journal and not a checkpoint of the whole state: a unit is small and written once, so a job
killed at any moment (a session's end, SIGKILL) loses at most the unit it was on. A line cut short
by the kill does not parse and is dropped with everything after it.

A job whose steps depend on each other (training, an RL loop) cannot be cut into such units; it keeps
a :class:`Snapshot` of its whole state instead, replaced as it goes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Journal:
    """The finished units of one job in ``path``, for a job identified by ``key`` (configs, in JSON-able containers)."""

    def __init__(self, path: str | os.PathLike, key: Any):
        from .config_keys import comparable, same_job

        self.path, self.key = Path(path), json.loads(json.dumps(comparable(key), sort_keys=True))
        self.units: dict[str, Any] = {}
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        try:
            header = json.loads(lines[0]) if lines else None
        except ValueError:
            header = None
        if not (isinstance(header, dict) and header.keys() == {"key"} and same_job(header["key"], key)):
            self.path.parent.mkdir(parents=True, exist_ok=True)  # another job's (or no) journal: start this one's
            self.path.write_text(json.dumps({"key": self.key}, sort_keys=True) + "\n", encoding="utf-8")
            return
        for n, line in enumerate(lines[1:], start=1):
            try:
                entry = json.loads(line)
                self.units[str(entry["unit"])] = entry["value"]
            except (ValueError, KeyError, TypeError):  # cut short by a kill: it and anything after it are redone
                self.path.write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
                break

    def __contains__(self, unit: str) -> bool:
        return unit in self.units

    def __getitem__(self, unit: str) -> Any:
        return self.units[unit]

    def __len__(self) -> int:
        return len(self.units)

    def add(self, unit: str, value: Any) -> None:
        """Record ``unit`` as finished with ``value``, on disk before this returns."""
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"unit": unit, "value": value}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.units[unit] = value

    def remove(self) -> None:
        """The job finished and wrote its results: the journal has served."""
        self.path.unlink(missing_ok=True)



class Snapshot:
    """The whole state of a job whose work does not split into independent units (training, an RL loop:
    every step changes the weights and the optimiser the next one starts from), in one file ``path``,
    under a ``key`` (configs, in JSON-able containers) that says which job saved it (config_keys.same_job).

    The job saves now and then; a rerun of the same job loads the state and goes on from there, a rerun
    of another config ignores it (``why`` then says so) and overwrites it. The file is written atomically
    (runs.atomic_torch_save), so a kill while saving leaves the previous snapshot whole, and read back
    with tensors and plain containers only (runs.read_torch): the state holds no pickled objects."""

    def __init__(self, path: str | os.PathLike, key: Any):
        from .config_keys import comparable

        self.path, self.raw_key, self.key = Path(path), key, json.dumps(comparable(key), sort_keys=True)
        self.why: str | None = None   # why the last load found nothing to resume, when there was a file

    def load(self) -> dict | None:
        """The saved state of this job, or None: no file, another job's, or unreadable (the job starts over)."""
        from .runs import read_torch

        saved, why = read_torch(self.path)
        self.why = None
        if saved is None:
            self.why = None if why == "no file" else f"cannot be read ({why})"
            return None
        if not isinstance(saved, dict) or not self._same(saved.get("key")):
            self.why = "is another config's"
            return None
        return {k: v for k, v in saved.items() if k != "key"}

    def _same(self, stored: Any) -> bool:
        from .config_keys import same_job

        try:
            return isinstance(stored, str) and same_job(json.loads(stored), self.raw_key)
        except ValueError:
            return False

    def save(self, state: dict) -> None:
        """Replace the snapshot with ``state`` (tensors and plain containers), whole or not at all."""
        from .runs import atomic_torch_save

        atomic_torch_save(self.path, {**state, "key": self.key})

    def remove(self) -> None:
        """The job finished and wrote its results: the snapshot has served."""
        self.path.unlink(missing_ok=True)
