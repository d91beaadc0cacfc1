"""Never score the same data twice: the key of a score set (what the rewards of a data set depend on)
and the score sets kept under it in the project store.

A score set is the (r+, r-) of every pair of the selected rows under one reward model, at one scoring
length. Its key is made of fingerprints, not names or times, so a retrained checkpoint written to the
same path, or an edited data file, is a new key, and a copy of the same file under another name is
the same key:

- the reward model: the bytes of every file of its checkpoint directory and, when its backbone comes
  from a base model (LoRA or head only), of the base model's directory (weights and tokenizer);
- the data: the bytes of the data file, the rows and whether invalid rows are skipped;
- the scoring max length (it decides which pairs fit and where prompts are cut).

A file's digest is kept per process by its stat (path, size, mtime, inode), so a checkpoint is read
once per process, not once per page run. A model or data set that is not a local file or directory
(a hub id outside the cache) has no fingerprint: its scores are not cached.

Reading back is defensive: a set whose format is older, whose checksum does not match its payload, or
whose pair ids are not the pairs asked for is a miss, and the caller scores again.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .data import PreferencePair
from .scoring import PairScores

FORMAT = 1                  # payload layout; a set stored in another format is a miss
KEY_FILE = "score_key.json"  # beside a scored.jsonl a job may reuse: the key its scores were made under
_CHUNK = 1 << 20

_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime_ns, inode, device) -> sha256 of the file's bytes
_DIGESTS_LOCK = threading.Lock()


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read once per process while its stat stays the same."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    with _DIGESTS_LOCK:
        found = _DIGESTS.get(stamp)
    if found is not None:
        return found
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    with _DIGESTS_LOCK:
        _DIGESTS[stamp] = h.hexdigest()
    return _DIGESTS[stamp]


def tree_digest(directory: str | os.PathLike) -> str:
    """sha256 over the relative path and bytes of every file under ``directory`` (hidden names, such as
    a save's leftovers, are not part of the model)."""
    root = Path(directory)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    for p in files:
        h.update(f"{p.relative_to(root).as_posix()}:{file_digest(p)};".encode())
    return h.hexdigest()


def _model_dir(name: str) -> Path | None:
    """The local directory a model name loads from (a hub id: its snapshot in the local cache), or None."""
    from .models import ModelError, _hub_cached, resolve_model_path

    try:
        resolved = resolve_model_path(name)
    except (ModelError, OSError):
        return None
    if Path(resolved).expanduser().is_dir():
        return Path(resolved).expanduser()
    cached = _hub_cached(resolved)
    return Path(cached).parent if cached else None


def model_fingerprint(name: str) -> str | None:
    """One digest of everything a reward model's scores come from: its checkpoint's files and, for a
    REFORM checkpoint whose backbone is its base model's (LoRA, head only), the base model's files.
    None when a part is not local (nothing to hash)."""
    from .reward_model import SPEC_FILE, read_spec

    path = Path(name).expanduser()
    if (path / SPEC_FILE).is_file():
        spec = read_spec(path)
        parts = [tree_digest(path)]
        if spec.finetune != "full":
            base = _model_dir(spec.base_model)
            if base is None:
                return None
            parts.append(tree_digest(base))
        return hashlib.sha256(";".join(parts).encode()).hexdigest()
    model = _model_dir(name)
    return None if model is None else tree_digest(model)


def data_fingerprint(source: str, rows: str, skip_invalid: bool) -> str | None:
    """Digest of the data file's bytes with the rows and the skip setting; None for a source that is
    not a local file (a hub id)."""
    path = Path(source).expanduser()
    if not path.is_file():
        return None
    return hashlib.sha256(json.dumps([file_digest(path), rows, bool(skip_invalid)]).encode()).hexdigest()


@dataclass(frozen=True)
class ScoreKey:
    rm: str            # model_fingerprint of the reward model
    data: str          # data_fingerprint of the data, rows and skip setting
    rows: str          # the rows ('' = all), kept readable
    max_length: int    # scoring limit, tokens per prompt + response

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps([FORMAT, self.rm, self.data, self.rows, self.max_length]).encode()).hexdigest()[:32]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "rm": self.rm, "data": self.data, "rows": self.rows, "max_length": self.max_length}


def score_key(reward_model: str, data: str, rows: str, skip_invalid: bool, max_length: int) -> ScoreKey | None:
    """The key of the scores of ``data`` (rows, skip setting) under ``reward_model`` at ``max_length``,
    or None when the model or the data has no fingerprint."""
    rm = model_fingerprint(reward_model)
    data_fp = data_fingerprint(data, rows, skip_invalid) if rm is not None else None
    return None if data_fp is None else ScoreKey(rm, data_fp, rows, int(max_length))


# --------------------------------------------------------------------------- the store's score sets

def _payload(pairs: Sequence[PreferencePair], scores: PairScores) -> str:
    return json.dumps({"pair_ids": [p.pair_id for p in pairs], "skipped": list(scores.skipped),
                       "r_chosen": scores.r_chosen.tolist(), "r_rejected": scores.r_rejected.tolist(),
                       "truncated": int(scores.truncated)})


def save_scores(store, key: ScoreKey, pairs: Sequence[PreferencePair], scores: PairScores) -> None:
    """Keep the scores of ``pairs`` (the selected rows, in order, as scored) under ``key``."""
    payload = _payload(pairs, scores)
    store.put_score_set(key.digest, rm_fingerprint=key.rm, data_fingerprint=key.data, row_range=key.rows,
                        max_length=key.max_length, format=FORMAT, n_pairs=len(pairs),
                        checksum=hashlib.sha256(payload.encode()).hexdigest(), payload=payload)


def load_scores(store, key: ScoreKey, pairs: Sequence[PreferencePair]) -> PairScores | None:
    """The stored scores of exactly ``pairs`` under ``key``, or None (a miss): nothing stored, another
    format, a payload that does not match its checksum or cannot be read, or other pairs."""
    row = store.get_score_set(key.digest)
    if row is None or row["format"] != FORMAT or row["n_pairs"] != len(pairs):
        return None
    payload = row["payload"]
    if hashlib.sha256(payload.encode()).hexdigest() != row["checksum"]:
        return None
    try:
        data = json.loads(payload)
        skipped = tuple(int(i) for i in data["skipped"])
        r_chosen, r_rejected = torch.tensor(data["r_chosen"]), torch.tensor(data["r_rejected"])
        ids, truncated = data["pair_ids"], int(data["truncated"])
    except (ValueError, KeyError, TypeError):
        return None
    n_scored = len(pairs) - len(skipped)
    if ids != [p.pair_id for p in pairs] or r_chosen.shape != (n_scored,) or r_rejected.shape != (n_scored,):
        return None
    return PairScores(r_chosen, r_rejected, truncated, skipped)


# --------------------------------------------------------------------------- the key beside a scores file

def write_key(directory: str | os.PathLike, key: ScoreKey) -> Path:
    """Record beside a scored.jsonl the key its scores were made under -> the file."""
    from .runs import atomic_write_json

    path = Path(directory) / KEY_FILE
    atomic_write_json(path, key.to_dict())
    return path


def read_key(directory: str | os.PathLike) -> ScoreKey | None:
    """The key recorded in ``directory`` (None: none, unreadable, or of another format)."""
    try:
        d = json.loads((Path(directory) / KEY_FILE).read_text(encoding="utf-8"))
        if d.get("format") != FORMAT:
            return None
        return ScoreKey(str(d["rm"]), str(d["data"]), str(d["rows"]), int(d["max_length"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
