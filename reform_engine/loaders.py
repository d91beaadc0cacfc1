"""Reading a local data file into rows, safely: regular files only, read as a stream against a byte cap.

- A FIFO, device, socket or directory is refused by its type (never opened in a way that could block).
- ``max_bytes`` caps the bytes *read*, counted after decompression, so a small ``.jsonl.gz`` that inflates
  to gigabytes is refused at the cap with memory bounded by the cap, never by its expanded size.
- A UTF-8 byte-order mark is accepted; bad UTF-8 and bad JSON are reported with their line.
- ``max_rows`` caps the rows, checked as they stream in (parsed rows take far more memory than their bytes).
- A malformed JSON line becomes an :class:`~reform_engine.data.Unreadable` row when ``skip_invalid``, so it is
  counted with the other skipped rows instead of refusing the file.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import stat
import zlib
from pathlib import Path
from typing import Any

from .data import DataError, Unreadable

_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _open_regular(path: Path) -> io.FileIO:
    """Open for reading only if ``path`` is a regular file. O_NONBLOCK plus fstat on the opened descriptor:
    a FIFO swapped in after the caller's stat still cannot make open() wait forever for a writer."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:  # permission denied, vanished since the caller's stat...
        raise DataError(f"cannot be read ({exc.strerror}).", source=str(path), fix="check the path and its permissions.") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        fix = "give the data file inside it." if stat.S_ISDIR(mode) else "save the data to a regular file and give its path."
        raise DataError(f"is {kind}, not a regular file.", source=str(path), fix=fix)
    return io.FileIO(fd, "r")


class _CappedReader(io.RawIOBase):
    """Reads ``stream`` (plain or gzip) and refuses at the first byte past ``limit``, so a decompression bomb
    costs at most ``limit`` bytes of memory and the time to inflate them, never its full size."""

    def __init__(self, stream: io.IOBase, limit: int, source: str):
        self.stream, self.limit, self.source, self.total = stream, limit, source, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.stream.readinto(buffer)
        self.total += n
        if self.total > self.limit:
            raise _too_big(self.source, self.limit, "when decompressed" if isinstance(self.stream, gzip.GzipFile) else "while being read")
        return n


def _too_big(source: str, limit: int, when: str) -> DataError:
    size = f"{limit / 2**20:.0f} MiB" if limit >= 2**20 else f"{limit:,} bytes"
    return DataError(f"expands beyond {size} {when} (the max_bytes limit); stopped reading there.", source=source,
                     fix="split it into smaller files, or raise max_bytes if you trust the file.")


def _too_many(source: str, limit: int) -> DataError:
    return DataError(f"has more than {limit:,} rows (the max_rows limit).", source=source,
                     fix="split it into smaller files, or raise max_rows if you trust the file.")


def _json_row(text: str) -> dict[str, Any] | Unreadable:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return Unreadable(f"line is not valid JSON ({exc.msg}, column {exc.colno})")
    except RecursionError:
        return Unreadable("line is JSON nested too deeply to be a preference pair")
    return obj if isinstance(obj, dict) else Unreadable(f"line is a JSON {type(obj).__name__}, not an object")


def _decode(raw: bytes, source: str, offset: int = 0, row: int | None = None) -> str:
    try:  # utf-8-sig: a leading byte-order mark (Excel, Notepad) is dropped rather than read as text
        return raw.decode("utf-8-sig" if offset == 0 else "utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"bytes at offset {offset + exc.start} are not valid UTF-8.", source=source,
                        row=row if row is not None else raw[: exc.start].count(b"\n") + 1,
                        fix="save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8).") from exc


def read_rows(path: Path, max_bytes: int, max_rows: int, skip_invalid: bool = False) -> list[dict[str, Any] | Unreadable]:
    """Rows of a local file, read as a stream against ``max_bytes`` (counted after decompression) and ``max_rows``."""
    source, name = str(path), path.name.lower()
    with _open_regular(path) as fh:
        if not name.endswith((".jsonl", ".jsonl.gz", ".json", ".parquet", ".csv")):
            raise DataError("unknown file type.", source=source, fix="use .jsonl, .jsonl.gz, .json, .parquet or .csv.")
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise DataError(f"file is {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit.", source=source,
                            fix="split the file or raise max_bytes.")
        if name.endswith(".parquet"):
            return _read_parquet(fh, source, max_bytes, max_rows)
        stream = gzip.GzipFile(fileobj=fh) if name.endswith(".gz") else fh
        reader = io.BufferedReader(_CappedReader(stream, max_bytes, source), buffer_size=1 << 20)
        try:
            if name.endswith((".jsonl", ".jsonl.gz")):
                return _read_jsonl(reader, source, max_rows, skip_invalid)
            raw = reader.read()
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError; a truncated stream is EOFError
            if stream is fh:
                raise DataError(f"could not be read ({exc}).", source=source, fix="check the disk and the file's permissions.") from exc
            raise DataError(f"not a valid gzip file ({exc}).", source=source,
                            fix="re-compress it with gzip or give the plain .jsonl.") from exc
    text = _decode(raw, source)
    if name.endswith(".csv"):
        import pandas as pd
        try:
            frame = pd.read_csv(io.StringIO(text), keep_default_na=False)
        except Exception as exc:
            raise DataError(f"not a readable CSV file ({exc}).", source=source, fix="check quoting and the header row.") from exc
        if len(frame) > max_rows:
            raise _too_many(source, max_rows)
        return frame.to_dict("records")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg}).", source=source, row=exc.lineno, fix="fix the JSON or use JSON Lines.") from exc
    except RecursionError as exc:
        raise DataError("JSON is nested too deeply to read.", source=source,
                        fix="a .json file must be a flat list of row objects ({\"prompt\": ..., \"chosen\": ..., \"rejected\": ...}).") from exc
    if not isinstance(data, list):
        raise DataError("a .json file must hold a list of objects.", source=source, fix="wrap the rows in [...] or use .jsonl.")
    if len(data) > max_rows:
        raise _too_many(source, max_rows)
    return data


def _read_jsonl(reader: io.BufferedReader, source: str, max_rows: int, skip_invalid: bool) -> list[dict[str, Any] | Unreadable]:
    rows, offset = [], 0
    for i, line in enumerate(reader, start=1):
        text, offset = _decode(line, source, offset, row=i), offset + len(line)
        if not text.strip():
            continue
        row = _json_row(text)
        if isinstance(row, Unreadable) and not skip_invalid:
            raise DataError(f"{row.reason}.", source=source, row=i,
                            fix="each line must be one JSON object (or load with skip_invalid=True to skip such lines).")
        rows.append(row)
        if len(rows) > max_rows:
            raise _too_many(source, max_rows)
    return rows


def _read_parquet(fh: io.FileIO, source: str, max_bytes: int, max_rows: int) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq
    rows: list[dict[str, Any]] = []
    try:  # to_pylist, not pandas: message lists must come back as lists, not numpy arrays
        pf = pq.ParquetFile(fh)
        if pf.metadata.num_rows > max_rows:
            raise _too_many(source, max_rows)
        if sum(pf.metadata.row_group(g).total_byte_size for g in range(pf.metadata.num_row_groups)) > max_bytes:
            raise _too_big(source, max_bytes, "when decoded")
        decoded = 0
        for batch in pf.iter_batches():  # the footer's sizes are the writer's word; count what is really decoded too
            decoded += batch.nbytes
            if decoded > max_bytes:
                raise _too_big(source, max_bytes, "when decoded")
            rows += batch.to_pylist()
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"not a readable parquet file ({exc}).", source=source, fix="re-export it as parquet or jsonl.") from exc
    return rows
