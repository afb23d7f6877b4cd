"""A persistent cache of judge calls, so an interrupted judge run resumes without repeating a call.

One SQLite file holds every finished call, keyed by (judge identity, prompt-template hash, question,
answer) and committed one result at a time (WAL journal): killing the process loses only the calls
still in flight. Only successful calls are stored; failures are retried on the next run.

The cache never holds credentials: the judge identity is the endpoint URL (refused if it carries a
credential), a model name and request parameters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["JudgeCache", "cache_key"]

log = logging.getLogger(__name__)


def cache_key(namespace: str, prompt_hash: str, question: str, answer: str) -> str:
    """The key of one judge call: SHA-256 over the judge identity, template hash, question and answer."""
    blob = json.dumps([namespace, prompt_hash, question, answer], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    """A key -> raw-judge-output store in one SQLite file (safe across processes and kills).

    Args:
        path: the database file; its folder is created. Several processes may share it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A process kill cannot lose a committed transaction in WAL mode with synchronous=NORMAL.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS judge_calls ("
            " key TEXT PRIMARY KEY, namespace TEXT NOT NULL, prompt_hash TEXT NOT NULL,"
            " value TEXT NOT NULL, created REAL NOT NULL)"
        )

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM judge_calls WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The stored values of those keys that are present."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, value in self._db.execute(
                    f"SELECT key, value FROM judge_calls WHERE key IN ({marks})", chunk
                ):
                    out[key] = json.loads(value)
        return out

    def put(self, key: str, value: dict[str, Any], *, namespace: str, prompt_hash: str) -> None:
        """Store one result and commit it at once."""
        blob = json.dumps(value, ensure_ascii=False)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO judge_calls (key, namespace, prompt_hash, value, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (key, namespace, prompt_hash, blob, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM judge_calls").fetchone()[0])

    def keys(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT key FROM judge_calls")}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
