"""Text corpora for SAEs and feature sets: chat JSONL, JSONL with a ``text`` field, or plain text."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

from spillover.data.chat import load_chat
from spillover.data.jsonl import iter_jsonl

__all__ = ["read_texts"]


def read_texts(path: str | Path) -> list[Any]:
    """A corpus file as samples: chat JSONL -> conversations; ``.txt`` or JSONL with ``text`` -> strings."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"corpus file {p} does not exist")
    if p.name.removesuffix(".gz").endswith(".txt"):
        opener: Any = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as fh:
            return [line.rstrip("\n") for line in fh if line.strip()]
    first: Any = next(iter_jsonl(p), (None, {}))[1]
    if not (isinstance(first, dict) and "text" in first and "messages" not in first):
        return list(load_chat(p))
    out: list[Any] = []
    for where, rec in iter_jsonl(p):
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise ValueError(f"{where}: expected a JSON object with a string 'text' field")
        out.append(rec["text"])
    return out
