"""Text corpora for SAEs and feature sets: chat JSONL, JSONL with a ``text`` field, or plain text."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from spillover.data.chat import load_chat

__all__ = ["read_texts"]


def read_texts(path: str | Path) -> list[Any]:
    """A corpus file as samples: chat JSONL -> conversations; ``.txt`` or JSONL with ``text`` -> strings."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"corpus file {p} does not exist")
    opener: Any = gzip.open if p.suffix == ".gz" else open
    stem = p.name.removesuffix(".gz")
    if stem.endswith(".txt"):
        with opener(p, "rt", encoding="utf-8") as fh:
            return [line.rstrip("\n") for line in fh if line.strip()]

    def parse(line: str, i: int) -> Any:
        try:
            return json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}:{i}: invalid JSON ({exc.msg} at column {exc.colno})") from exc

    with opener(p, "rt", encoding="utf-8") as fh:
        first = next(((i, line) for i, line in enumerate(fh, 1) if line.strip()), None)
    record = parse(first[1], first[0]) if first else {}
    if isinstance(record, dict) and "text" in record and "messages" not in record:
        out: list[Any] = []
        with opener(p, "rt", encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if line.strip():
                    rec = parse(line, i)
                    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                        raise ValueError(f"{p}:{i}: expected a JSON object with a string 'text' field")
                    out.append(rec["text"])
        return out
    return list(load_chat(p))
