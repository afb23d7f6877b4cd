"""The one JSONL reader: plain or gzipped, blank lines skipped, every error naming the file and line."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["JSONLFormatError", "iter_jsonl", "read_jsonl"]


class JSONLFormatError(ValueError):
    """A JSONL file that cannot be read: the message names the file and line."""


def iter_jsonl(path: str | Path, *, error: type[ValueError] = JSONLFormatError) -> Iterator[tuple[str, Any]]:
    """Yield ``("FILE:LINE", value)`` for each non-blank line of a JSONL or JSONL.gz file.

    Args:
        path: the file; ``.gz`` is decompressed.
        error: the exception class raised for a line that is not UTF-8 or not JSON, or a corrupt gzip
            stream (callers pass their own format error, e.g. ``ChatFormatError``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}")
    lineno = 0
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                where = f"{path}:{lineno}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise error(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
                if not line.strip():
                    continue
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise error(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise error(f"{path}: corrupt gzip stream after line {lineno} ({exc})") from exc


def read_jsonl(path: str | Path, *, error: type[ValueError] = JSONLFormatError) -> list[dict[str, Any]]:
    """Every line of a JSONL(.gz) file as a JSON object (see :func:`iter_jsonl`)."""
    rows: list[dict[str, Any]] = []
    for where, row in iter_jsonl(path, error=error):
        if not isinstance(row, dict):
            raise error(f"{where}: expected a JSON object")
        rows.append(row)
    return rows
