"""Preference pairs (x, y+, y-): loading, validation and the embedded demo set.

Accepted inputs
- HH format: ``chosen`` / ``rejected`` are whole dialogues ("\\n\\nHuman: ...\\n\\nAssistant: ...");
  the prompt is everything up to the last "\\n\\nAssistant:", the response what follows it.
- TRL format: ``prompt`` / ``chosen`` / ``rejected``, each a string or a list of chat messages
  ({"role", "content"}); with message lists the prompt may also be implicit (shared leading turns).
- Sources: a local ``.jsonl``, ``.jsonl.gz``, ``.json``, ``.parquet`` or ``.csv`` file, or a Hugging
  Face hub dataset id (only when online). ``column_map`` renames the file's columns to ours.
  Files are read by :mod:`reform_engine.loaders` (regular files only, streamed against ``max_bytes``).

Every bad input raises :class:`DataError` naming the source, the row and the fix.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

DEMO_PATH = Path(__file__).resolve().parent.parent / "data" / "demo_pairs.jsonl"
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".csv", ".gz")
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
ASSISTANT_TAG = "\n\nAssistant:"
_TURN_RE = re.compile(r"\n\n(Human|Assistant):")
_ROLE = {"Human": "user", "Assistant": "assistant"}
# A parsed row and its pair cost ~750 bytes beyond their text (1.5M tiny rows took 1.1 GiB), so max_bytes alone
# would let a 200 KB .jsonl.gz of tiny rows take gigabytes. HH-RLHF has 161k pairs, far fewer than this.
DEFAULT_MAX_ROWS = 1_000_000


class DataError(ValueError):
    """A bad input: says where (source, row) and what to do about it."""

    def __init__(self, message: str, *, source: str = "", row: int | None = None, fix: str = ""):
        self.message, self.source, self.row, self.fix = message, source, row, fix
        where = source + (f", row {row}" if row is not None else "")
        text = f"{where}: {message}" if where else message
        super().__init__(text + (f" Fix: {fix}" if fix else ""))


class ColumnError(DataError):
    """The columns are not ours (chosen/rejected, and prompt for TRL): a column map fixes it. The app
    catches this one to point its fix at its own column mapping instead of ``column_map``."""


@dataclass(frozen=True)
class PreferencePair:
    """One comparison. ``prompt`` is a tuple of chat messages ending with a user turn."""

    pair_id: str
    prompt: tuple[dict[str, str], ...]
    chosen: str
    rejected: str

    @property
    def prompt_text(self) -> str:
        """The prompt in HH form, for display and for HH export."""
        return hh_text(self.prompt)

    def to_hh(self) -> dict[str, str]:
        return {"chosen": f"{self.prompt_text}{ASSISTANT_TAG} {self.chosen}", "rejected": f"{self.prompt_text}{ASSISTANT_TAG} {self.rejected}"}

    def to_trl(self) -> dict[str, Any]:
        return {"prompt": [dict(m) for m in self.prompt], "chosen": self.chosen, "rejected": self.rejected}


@dataclass
class LoadReport:
    source: str
    rows_read: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)


@dataclass
class PreferenceData:
    pairs: list[PreferencePair]
    report: LoadReport

    def __len__(self) -> int:
        return len(self.pairs)


def hh_text(messages: Sequence[dict[str, str]]) -> str:
    """Chat messages as HH text ("\n\nHuman: ...\n\nAssistant: ..."); :func:`prompt_from_text` reads it back."""
    return "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant' if m['role'] == 'assistant' else m['role'].title()}: "
                   f"{m['content']}" for m in messages)


def _row_of(pair: PreferencePair) -> int:
    return int(pair.pair_id.rsplit(":", 1)[-1])


# --------------------------------------------------------------------------- parsing one row

def parse_hh_dialogue(text: str) -> tuple[tuple[dict[str, str], ...], str]:
    """Split an HH dialogue into (prompt messages, final assistant response)."""
    cut = text.rfind(ASSISTANT_TAG)
    if cut < 0:
        raise ValueError('it has no "\\n\\nAssistant:" turn, so there is no response to score')
    head, response = text[:cut], text[cut + len(ASSISTANT_TAG):].strip()
    parts = _TURN_RE.split(head)
    if parts[0].strip():
        raise ValueError('text before the first "\\n\\nHuman:" turn; HH dialogues start with "\\n\\nHuman:"')
    messages = tuple({"role": _ROLE[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2))
    if not messages or messages[-1]["role"] != "user":
        raise ValueError('the last turn before the response must be "\\n\\nHuman:"')
    return messages, response


def _as_messages(value: Any, what: str) -> tuple[dict[str, str], ...]:
    if isinstance(value, str):
        if _TURN_RE.search(value):
            return parse_hh_dialogue(value + ASSISTANT_TAG + " x")[0]
        return ({"role": "user", "content": value.strip()},)
    if isinstance(value, (list, tuple)) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return tuple({"role": str(m["role"]), "content": str(m["content"])} for m in value)
    raise ValueError(f"{what} must be a string or a list of {{'role', 'content'}} messages, got {type(value).__name__}")


def _response_text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value.strip()
    msgs = _as_messages(value, what)
    if msgs[-1]["role"] != "assistant":
        raise ValueError(f"{what} as a message list must end with an assistant message")
    return msgs[-1]["content"].strip()


def parse_row(row: dict[str, Any], fmt: str) -> tuple[tuple[dict[str, str], ...], str, str]:
    """Return (prompt messages, chosen response, rejected response) or raise ValueError saying why."""
    if fmt == "hh":
        if not isinstance(row["chosen"], str) or not isinstance(row["rejected"], str):
            raise ValueError("HH rows need 'chosen' and 'rejected' as dialogue strings")
        prompt, chosen = parse_hh_dialogue(row["chosen"])
        prompt_r, rejected = parse_hh_dialogue(row["rejected"])
        if prompt_r != prompt:
            raise ValueError("chosen and rejected dialogues differ before the last Assistant turn; they must share the prompt")
    else:
        if row.get("prompt") is not None:
            prompt = _as_messages(row["prompt"], "prompt")
            chosen, rejected = _response_text(row["chosen"], "chosen"), _response_text(row["rejected"], "rejected")
        else:  # implicit prompt: two message lists sharing their leading turns
            c, r = _as_messages(row["chosen"], "chosen"), _as_messages(row["rejected"], "rejected")
            if c[:-1] != r[:-1] or len(c) < 2:
                raise ValueError("without a 'prompt' column, chosen and rejected must be message lists sharing all but the last turn")
            prompt, chosen, rejected = c[:-1], c[-1]["content"].strip(), r[-1]["content"].strip()
        if not prompt or prompt[-1]["role"] != "user":
            raise ValueError("the prompt must end with a user message")
    if not chosen:
        raise ValueError("the chosen response is empty")
    if not rejected:
        raise ValueError("the rejected response is empty")
    if chosen == rejected:
        raise ValueError("chosen and rejected responses are identical, so the pair says nothing")
    return prompt, chosen, rejected


# --------------------------------------------------------------------------- reading files

class Unreadable:
    """Stands in for a row a loader could not parse, so skip_invalid can count it and later row numbers stay put."""

    def __init__(self, reason: str):
        self.reason = reason


def _hub_dataset_cached(dataset_id: str) -> bool:
    """Whether a hub dataset has files in the local Hugging Face caches (the hub's, or the datasets library's)."""
    from datasets import config
    from huggingface_hub import constants

    return ((Path(constants.HF_HUB_CACHE) / f"datasets--{dataset_id.replace('/', '--')}").is_dir()
            or (Path(config.HF_DATASETS_CACHE) / dataset_id.replace("/", "___")).is_dir())


def _read_hub(dataset_id: str, split: str) -> list[dict[str, Any]]:
    from .models import hub_unreachable

    reason = "" if _hub_dataset_cached(dataset_id) else hub_unreachable()
    if reason:  # the datasets library would retry for half a minute before saying so
        raise DataError(f"no such local file, and as a hub dataset id it is not in the local cache while the hub cannot "
                        f"be reached ({reason}).", source=dataset_id,
                        fix="check the path, or download the dataset where there is a network and give its local file.")
    try:
        import datasets
        return list(datasets.load_dataset(dataset_id, split=split))
    except Exception as exc:  # offline, unknown id, gated...
        raise DataError(f"could not load hub dataset ({type(exc).__name__}: {exc}).", source=dataset_id,
                        fix="check the id and network, or download it and give a local file.") from exc


def detect_format(columns: Iterable[str]) -> str:
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        return "trl" if "prompt" in cols else "hh_or_implicit"
    missing = sorted({"chosen", "rejected"} - cols)
    raise ValueError(f"missing column(s) {missing}; found {sorted(cols)}")


def pairs_from_rows(rows: Sequence[dict[str, Any]], source: str, *, fmt: str = "auto", column_map: dict[str, str] | None = None,
                    skip_invalid: bool = False) -> PreferenceData:
    """Validate rows and build pairs. Row numbers in errors are 1-based like a text editor's lines."""
    report = LoadReport(source=source, rows_read=len(rows))
    if not rows:
        raise DataError("no rows.", source=source, fix="give a file with at least one preference pair.")
    if column_map:
        rows = [{column_map.get(k, k): v for k, v in r.items()} if isinstance(r, dict) else r for r in rows]
    first = next((i for i, r in enumerate(rows) if isinstance(r, dict)), None)
    kind = "trl"  # with no object row at all, each row is refused (or skipped) below for not being one
    if first is not None:
        try:
            kind = detect_format(rows[first].keys())
        except ValueError as exc:
            raise ColumnError(f"{exc}.", source=source, row=first + 1, fix="name the columns chosen/rejected (HH) or "
                              "prompt/chosen/rejected (TRL), or pass column_map.") from exc
    if fmt == "auto":
        fmt = "trl" if kind == "trl" or not isinstance(rows[first]["chosen"], str) else "hh"
    if fmt not in ("hh", "trl"):
        raise DataError(f"format {fmt!r} is unknown.", source=source, fix="use 'auto', 'hh' or 'trl'.")
    pairs: list[PreferencePair] = []
    for i, row in enumerate(rows, start=1):
        try:
            if isinstance(row, Unreadable):
                raise ValueError(row.reason)
            if not isinstance(row, dict):
                raise ValueError(f'row is a {type(row).__name__}, not an object like {{"prompt": ..., "chosen": ..., "rejected": ...}}')
            missing = [c for c in (("prompt", "chosen", "rejected") if kind == "trl" else ("chosen", "rejected")) if c not in row]
            if missing:
                raise ValueError(f"missing column(s) {missing}")
            prompt, chosen, rejected = parse_row(row, fmt)
        except (ValueError, KeyError, TypeError) as exc:
            if skip_invalid:
                report.skipped.append((i, str(exc)))
                continue
            raise DataError(f"{exc}.", source=source, row=i, fix="correct or remove this row (or load with skip_invalid=True to skip such rows).") from exc
        pairs.append(PreferencePair(f"{Path(source).name}:{i - 1}", prompt, chosen, rejected))
    if not pairs:
        raise DataError(f"every row was invalid (first: row {report.skipped[0][0]}: {report.skipped[0][1]}).", source=source,
                        fix="check the format and column names.")
    return PreferenceData(pairs, report)


def load_preferences(source: str | os.PathLike, *, fmt: str = "auto", column_map: dict[str, str] | None = None,
                     skip_invalid: bool = False, max_bytes: int = DEFAULT_MAX_BYTES, max_rows: int = DEFAULT_MAX_ROWS,
                     split: str = "train") -> PreferenceData:
    """Load pairs from a local file or (if no such file exists) a hub dataset id."""
    if not str(source).strip():  # Path("") is the current directory: it would be refused as "a directory"
        raise DataError("no data file given.", fix="enter a path to a .jsonl, .jsonl.gz, .json, .parquet or .csv file "
                                                   "(or a hub dataset id).")
    path = Path(source).expanduser()
    try:  # stat, not open: it never waits on a FIFO; read_rows refuses anything but a regular file
        path.stat()
        exists = True
    except (FileNotFoundError, NotADirectoryError):
        exists = False
    except OSError as exc:  # permission denied, name too long, symlink loop...
        raise DataError(f"cannot be read ({exc.strerror}).", source=str(source), fix="check the path and its permissions.") from exc
    if exists:
        from .loaders import read_rows  # loaders raises DataError, so it imports this module
        rows = read_rows(path, max_bytes, max_rows, skip_invalid)
    elif path.name.lower().endswith(FILE_SUFFIXES) or str(source).startswith((".", "/", "~")):
        raise DataError("no such file.", source=str(source), fix="check the path.")
    else:
        rows = _read_hub(str(source), split)
    return pairs_from_rows(rows, str(source), fmt=fmt, column_map=column_map, skip_invalid=skip_invalid)


def load_demo() -> PreferenceData:
    """The embedded hand-written demo set (see data/README.md)."""
    return load_preferences(DEMO_PATH, fmt="hh")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    from .runs import atomic_write_text
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def replace(pair: PreferencePair, **changes: Any) -> PreferencePair:
    return dataclasses.replace(pair, **changes)


def added_pair(direction: str, chosen: str, rejected: str, variant: str) -> tuple[str, str]:
    """(chosen, rejected) of the pair a REFORM variant adds to the training data, texts stripped: a
    variant decoded "raise" from the rejected response y- (a bad response the RM scores high) adds
    (y+, y''); one decoded "lower" from the chosen response (a good one the RM scores low) adds
    (y', y-), and so does an imported pair, whose variant text is its chosen response; an Adv-RM sample
    ("adv-rm") is a rejected side, as "raise": (y+, sample). The one rule for the inversion filter, the
    curation page and the project database (hence here, below them all)."""
    return (chosen.strip(), variant.strip()) if direction in ("raise", "adv-rm") else (variant.strip(), rejected.strip())


ROWS_HELP = ("'a:b' 0-based source rows ('' = all), or 'fold=k/K' / 'fold!=k/K' (fold k of K drawn at random over "
             "rows, or all the others; '@S' picks the draw, e.g. 'fold=0/5@1')")
_FOLD = re.compile(r"^fold(!?=)(\d+)/(\d+)(?:@(\d+))?$")


@dataclass(frozen=True)
class RowSpec:
    """Which source rows a job reads: a range ``start:stop``, or one random fold of a K-fold split (or its
    complement). A row's fold is a hash of (draw seed, row number), so it never depends on the other rows
    or on which of them were skipped: the same row is in the same fold in every job and every file
    length, and folds differ in size by a few rows only."""

    start: int | None = None
    stop: int | None = None
    fold: int | None = None       # k of K (None: a range)
    folds: int = 0                # K
    seed: int = 0                 # which random draw of folds
    inside: bool = True           # fold=k (True) or fold!=k, every other fold (False)

    def contains(self, row: int) -> bool:
        if self.fold is None:
            return (self.start or 0) <= row and (self.stop is None or row < self.stop)
        return (fold_of(row, self.folds, self.seed) == self.fold) == self.inside

    def complement(self) -> str:
        """The spec of the rows this one leaves out after it (a range's rows after ``stop``, '' when it
        runs to the end), or the other folds."""
        if self.fold is None:
            return f"{self.stop}:" if self.stop is not None else ""
        return f"fold{'!=' if self.inside else '='}{self.fold}/{self.folds}@{self.seed}"


def fold_of(row: int, folds: int, seed: int = 0) -> int:
    """The fold (0..folds-1) of source row ``row`` in draw ``seed``: uniform, fixed, independent per row."""
    digest = hashlib.sha256(f"reform-fold:{seed}:{row}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % folds


def parse_rows(spec: str) -> RowSpec:
    """'a:b', 'a:', ':b', '' (all), 'fold=k/K[@S]' or 'fold!=k/K[@S]' -> RowSpec over source row numbers."""
    if not spec:
        return RowSpec()
    m = _FOLD.match(spec.replace(" ", ""))
    if m:
        k, n, seed = int(m.group(2)), int(m.group(3)), int(m.group(4) or 0)
        if n < 2 or k >= n:
            raise ValueError(f"rows={spec!r}: a fold k/K needs K >= 2 and 0 <= k < K, e.g. 'fold=0/5'")
        return RowSpec(fold=k, folds=n, seed=seed, inside=m.group(1) == "=")
    try:
        a, b = spec.split(":")
        return RowSpec(int(a) if a else None, int(b) if b else None)
    except ValueError as exc:
        raise ValueError(f"rows={spec!r}; write 'start:end' with 0-based row numbers, e.g. '0:1500' or '1500:', "
                         "or a random fold such as 'fold=0/5'") from exc


def select_rows(pairs: Sequence[PreferencePair], spec: str) -> list[PreferencePair]:
    """Pairs whose source row falls in ``spec`` (rows skipped as invalid simply are not there)."""
    rows = parse_rows(spec)
    return [p for p in pairs if rows.contains(_row_of(p))]


def split_rows(pairs: Sequence[PreferencePair], train_share: float = 0.8) -> tuple[str, str]:
    """(training rows, held-out rows) as 'a:b' source-row ranges: the first ``train_share`` of the
    pairs for training, the rest held out (the demo set's 165 pairs: '0:132', '132:165')."""
    if not 0 < train_share < 1:
        raise ValueError(f"train_share={train_share}; give a share strictly between 0 and 1, e.g. 0.8")
    rows = sorted(_row_of(p) for p in pairs)
    if len(rows) < 2:
        raise DataError(f"{len(rows)} pair(s) cannot be split into training and held-out rows.", fix="use at least 2 pairs.")
    cut = rows[min(len(rows) - 1, max(1, int(len(rows) * train_share)))]
    return f"{rows[0]}:{cut}", f"{cut}:{rows[-1] + 1}"


def overlapping_rows(a: str, b: str) -> str:
    """The rows two row specs share: for two ranges 'start:end' ('start:' when both run to the end); for
    a fold spec, a description of the rows in both ('' when none: two different folds of the same draw,
    or a fold and its complement)."""
    sa, sb = parse_rows(a), parse_rows(b)
    if sa.fold is None and sb.fold is None:
        lo = max(sa.start or 0, sb.start or 0)
        ends = [s.stop for s in (sa, sb) if s.stop is not None]
        hi = min(ends) if ends else None
        return "" if hi is not None and hi <= lo else f"{lo}:{'' if hi is None else hi}"
    if sa.fold is not None and sb.fold is not None and (sa.folds, sa.seed) == (sb.folds, sb.seed):
        if (sa.fold == sb.fold and sa.inside != sb.inside) or (sa.inside and sb.inside and sa.fold != sb.fold):
            return ""
    return f"those in both {a or 'all'} and {b or 'all'}"


def same_source(a: str, b: str) -> bool:
    """Whether two data sources name the same file (relative paths from the working directory) or hub id."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.resolve() == pb.resolve() if pa.exists() or pb.exists() else a.strip() == b.strip()


def prompt_from_text(text: str) -> tuple[dict[str, str], ...]:
    """A typed prompt -> chat messages: HH text ("\\n\\nHuman: ... \\n\\nAssistant: ...") keeps its turns,
    anything else is one user message."""
    if not text or not text.strip():
        raise DataError("the prompt is empty.", fix="type the user's message (or an HH dialogue ending with a Human turn).")
    if text.lstrip().startswith(("Human:", "Assistant:")):
        text = "\n\n" + text.lstrip()
    try:
        messages = _as_messages(text, "prompt")
    except ValueError as exc:
        raise DataError(f"{exc}.", fix='write HH turns as "\\n\\nHuman: ..." and "\\n\\nAssistant: ...".') from exc
    if messages[-1]["role"] != "user":
        raise DataError("the prompt must end with a Human (user) turn.", fix="end the dialogue with the user's message.")
    return messages


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
UPLOAD_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".csv")
UPLOAD_NAME_CHARS = 100  # of an upload's own name in its kept name (file systems allow 255 bytes)


def _safe_base(name: str) -> str:
    """The last component of ``name`` in safe characters: no path can escape a directory."""
    return _SAFE_NAME.sub("_", Path(str(name).replace("\\", "/")).name).lstrip(".") or "upload"


def upload_file_name(name: str, content: bytes) -> str:
    """The name an upload is kept under: 16 hex digits of its content's SHA-256, then its own name in
    safe characters, cut to UPLOAD_NAME_CHARS with its extension kept. A different file uploaded
    under the same name gets a different name, so the file an earlier run read is never replaced."""
    import hashlib

    base = _safe_base(name)
    suffix = next((s for s in sorted(UPLOAD_SUFFIXES, key=len, reverse=True) if base.lower().endswith(s)), "")
    stem = base[: len(base) - len(suffix)][: UPLOAD_NAME_CHARS - len(suffix)]
    return f"{hashlib.sha256(content).hexdigest()[:16]}-{stem}{base[len(base) - len(suffix):]}"


def save_upload(name: str, content: bytes, directory: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """Keep an uploaded data file under ``directory`` (named by :func:`upload_file_name`) and return
    its path, after checking its type and size. An identical earlier upload is reused, never rewritten.
    The content is validated by :func:`load_preferences` like any other file."""
    base = _safe_base(name)
    if not base.lower().endswith(UPLOAD_SUFFIXES):
        raise DataError("unknown file type.", source=str(name), fix="upload .jsonl, .jsonl.gz, .json, .parquet or .csv.")
    if len(content) > max_bytes:
        raise DataError(f"file is {len(content) / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit.", source=str(name),
                        fix="split the file, or give its local path instead of uploading it.")
    if not content:
        raise DataError("file is empty.", source=str(name), fix="upload a file with at least one preference pair.")
    target = Path(directory) / upload_file_name(name, content)
    if not target.is_file():  # same name and content hash: this very file is already kept
        from .runs import atomic_write_bytes
        atomic_write_bytes(target, content)
    return target


OUR_COLUMNS = ("prompt", "chosen", "rejected")


def column_map_of(**theirs: str) -> dict[str, str]:
    """The file's column names for ours (``prompt=``, ``chosen=``, ``rejected=``; empty = named as ours)
    -> a ``column_map`` ({their name: ours}) for :func:`load_preferences`."""
    unknown = sorted(set(theirs) - set(OUR_COLUMNS))
    if unknown:
        raise DataError(f"unknown column(s) {unknown}.", fix=f"map only {', '.join(OUR_COLUMNS)}.")
    given = {ours: name.strip() for ours, name in theirs.items() if name and name.strip()}
    if len(set(given.values())) < len(given):
        raise DataError("one column of the file is mapped to two of ours.",
                        fix="give each of prompt, chosen and rejected its own column.")
    return {name: ours for ours, name in given.items() if name != ours}


def _jsonable(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)  # parquet hands list cells over as numpy arrays


def save_mapped(source: str | os.PathLike, column_map: dict[str, str], directory: str | os.PathLike, *,
                max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """A local data file with its columns renamed by ``column_map``, kept under ``directory`` as
    ``.jsonl`` -> its path; validated first like :func:`load_preferences` (skipping invalid rows), so
    a map that leaves no pair raises DataError and writes nothing. Rows keep their numbers (a row that
    could not be read stays a row, skipped again when loaded), so row ranges mean the same rows. Jobs
    and pages then read it like any file, with no map to carry around."""
    import hashlib

    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError("a column mapping needs a local file.", source=str(source), fix="give the path of a data file.")
    from .loaders import read_rows
    rows = read_rows(path, max_bytes, DEFAULT_MAX_ROWS, True)
    pairs_from_rows(rows, str(source), column_map=column_map, skip_invalid=True)  # raises when nothing is left
    renamed = [{column_map.get(k, k): v for k, v in r.items()} if isinstance(r, dict) else
               (r.reason if isinstance(r, Unreadable) else r) for r in rows]
    text = "".join(json.dumps(r, ensure_ascii=False, default=_jsonable) + "\n" for r in renamed)
    stat = path.stat()
    key = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, sorted(column_map.items())])
    stem = _safe_base(path.name)
    for suffix in sorted(UPLOAD_SUFFIXES, key=len, reverse=True):
        if stem.lower().endswith(suffix):
            stem = stem[: len(stem) - len(suffix)]
            break
    target = Path(directory) / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}-{stem[:UPLOAD_NAME_CHARS]}.mapped.jsonl"
    if not target.is_file():
        from .runs import atomic_write_text
        atomic_write_text(target, text)
    return target
