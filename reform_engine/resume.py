"""Resuming a long job where it stopped: each finished unit of its work (a batch of decoded variants,
say) is appended to a JSONL file in the run directory as it finishes, under a key that says which job
made it (its config, placement aside, and its inputs). A rerun of the same job in the same directory
reads the units back and does only the rest; a rerun of another config starts the file anew.

Why a journal and not a checkpoint of the whole state: a unit is small and written once, so a job
killed at any moment (a session's end, SIGKILL) loses at most the unit it was on. A line cut short
by the kill does not parse and is dropped with everything after it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Journal:
    """The finished units of one job in ``path``, for a job identified by ``key`` (JSON-able)."""

    def __init__(self, path: str | os.PathLike, key: Any):
        self.path, self.key = Path(path), json.loads(json.dumps(key, sort_keys=True))
        self.units: dict[str, Any] = {}
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        try:
            header = json.loads(lines[0]) if lines else None
        except ValueError:
            header = None
        if header != {"key": self.key}:  # another job's (or no) journal: start this one's
            self.path.parent.mkdir(parents=True, exist_ok=True)
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
