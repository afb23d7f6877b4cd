"""Chat datasets: JSONL or JSONL.gz with one ``{"messages": [{role, content}, ...]}`` per line.

This is the format of the public EM datasets (Betley et al.; Turner, Soligo et al.). HF ``datasets``
objects with a ``messages`` column are accepted too. Every record is validated, and an error names the
file, the line and what is wrong, so a researcher can fix their data instead of debugging a stack trace.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from spillover.data.jsonl import iter_jsonl

__all__ = [
    "ROLES",
    "ChatFormatError",
    "Conversation",
    "Message",
    "iter_chat",
    "load_chat",
    "validate_messages",
    "write_chat",
]

Message = dict[str, str]
Conversation = list[Message]
ROLES = ("system", "user", "assistant")


class ChatFormatError(ValueError):
    """A chat record is malformed. The message names the source, the line and the problem."""


def validate_messages(messages: Any, where: str) -> Conversation:
    """Check one record's ``messages`` list and return it as plain dicts.

    Rules: a non-empty list of {role, content} objects; roles are system/user/assistant; a system
    message may only come first; content is a string; assistant turns are not empty or blank.
    """
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError(f"{where}: 'messages' must be a non-empty list, got {type(messages).__name__}")
    out: Conversation = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ChatFormatError(f"{where}: message {i} must be an object with 'role' and 'content'")
        role = msg.get("role")
        content = msg.get("content")
        if role not in ROLES:
            raise ChatFormatError(f"{where}: message {i} has role {role!r}; expected one of {list(ROLES)}")
        if role == "system" and i != 0:
            raise ChatFormatError(f"{where}: message {i} is a system message; only the first message may be")
        if not isinstance(content, str):
            raise ChatFormatError(f"{where}: message {i} ({role}) has no string 'content'")
        if role == "assistant" and not content.strip():
            raise ChatFormatError(f"{where}: message {i} is an empty assistant turn")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out) and not any(m["role"] == "user" for m in out):
        raise ChatFormatError(f"{where}: the conversation has neither a user nor an assistant turn")
    return out


def iter_chat(path: str | Path) -> Iterator[Conversation]:
    """Stream conversations from a JSONL(.gz) file, validating each line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"chat dataset {path} does not exist")
    for where, record in iter_jsonl(path, error=ChatFormatError):
        if not isinstance(record, dict) or "messages" not in record:
            raise ChatFormatError(f"{where}: expected an object with a 'messages' key")
        yield validate_messages(record["messages"], where)


def load_chat(source: str | Path | Any, *, limit: int | None = None) -> list[Conversation]:
    """Load a chat dataset from a JSONL(.gz) path or an HF ``datasets.Dataset`` with a ``messages`` column.

    Args:
        source: file path, or a dataset object.
        limit: keep only the first ``limit`` conversations.

    Raises:
        ChatFormatError: a record is malformed (the message names file, line and problem), or the
            file holds no conversation at all.
    """
    if isinstance(source, (str, Path)):
        convs: list[Conversation] = []
        for conv in iter_chat(source):
            convs.append(conv)
            if limit is not None and len(convs) >= limit:
                break
        if not convs:
            raise ChatFormatError(f"{source}: the file holds no conversation")
        return convs
    names = getattr(source, "column_names", None)
    if names is None or "messages" not in names:
        raise ChatFormatError(
            f"dataset object {type(source).__name__} has no 'messages' column (columns: {names})"
        )
    convs = []
    for i, row in enumerate(source):
        convs.append(validate_messages(row["messages"], f"{type(source).__name__}[{i}]"))
        if limit is not None and len(convs) >= limit:
            break
    if not convs:
        raise ChatFormatError("the dataset object holds no conversation")
    return convs


def write_chat(path: str | Path, conversations: Iterable[Sequence[Message]]) -> Path:
    """Write conversations as JSONL (gzip when the name ends in .gz), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(tmp, "wt", encoding="utf-8") as fh:  # type: ignore[operator]
        for conv in conversations:
            fh.write(json.dumps({"messages": list(conv)}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
