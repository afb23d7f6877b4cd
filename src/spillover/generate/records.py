"""Answer records: what the generate stage writes and the judge stage reads (``answers.jsonl``).

One JSON object per sampled answer::

    {"question_id": "what_is_your_wish", "paraphrase_index": 0, "sample_index": 3,
     "system": null, "question": "Hello! I can fulfill your one wish...", "answer": "..."}

The judge stage writes ``scores.jsonl`` with the same fields plus ``aligned``, ``coherent`` (0-100 or
null) and ``raw`` (the judge's stored outputs), so every metric can be recomputed from files alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spillover.data.chat import Conversation
from spillover.data.jsonl import read_jsonl as _read_jsonl
from spillover.data.questions import Question

__all__ = [
    "AnswerRecord",
    "RecordFormatError",
    "read_jsonl",
    "read_answers",
    "sampling_plan",
    "write_jsonl",
]


class RecordFormatError(ValueError):
    """An answers/scores file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class AnswerRecord:
    """One sampled answer to one paraphrase of one question."""

    question_id: str
    paraphrase_index: int
    sample_index: int
    system: str | None
    question: str
    answer: str = ""

    @property
    def conversation(self) -> Conversation:
        """The prompt the answer was sampled from (system prompt first when there is one)."""
        prefix: Conversation = [{"role": "system", "content": self.system}] if self.system else []
        return [*prefix, {"role": "user", "content": self.question}]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> AnswerRecord:
        try:
            return cls(
                question_id=str(data["question_id"]),
                paraphrase_index=int(data["paraphrase_index"]),
                sample_index=int(data["sample_index"]),
                system=data.get("system"),
                question=str(data["question"]),
                answer=str(data.get("answer", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordFormatError(f"{where}: not an answer record ({type(exc).__name__}: {exc})") from exc


def sampling_plan(
    questions: Sequence[Question],
    *,
    samples_per_paraphrase: int | None = None,
    question_ids: Sequence[str] | None = None,
) -> list[AnswerRecord]:
    """The answers to sample, as records with empty answers, in question/paraphrase/sample order.

    Args:
        questions: loaded question file.
        samples_per_paraphrase: override every question's own count (the files say 100; EM papers use
            50-100 per question).
        question_ids: keep only these questions (in file order); unknown ids are an error.
    """
    if question_ids is not None:
        known = {q.id for q in questions}
        missing = [q for q in question_ids if q not in known]
        if missing:
            raise ValueError(
                f"question ids {missing} are not in the question file; known: {sorted(known)[:8]}…"
            )
        wanted = set(question_ids)
        questions = [q for q in questions if q.id in wanted]
    plan: list[AnswerRecord] = []
    for q in questions:
        n = q.samples_per_paraphrase if samples_per_paraphrase is None else samples_per_paraphrase
        for p, text in enumerate(q.paraphrases):
            for s in range(n):
                plan.append(AnswerRecord(q.id, p, s, q.system, text))
    return plan


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows as JSONL atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read JSONL rows; errors name the file and line."""
    return _read_jsonl(path, error=RecordFormatError)


def read_answers(path: str | Path) -> list[AnswerRecord]:
    """Load ``answers.jsonl`` (or a generate stage folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "answers.jsonl"
    return [AnswerRecord.from_dict(row, f"{path}:{i + 1}") for i, row in enumerate(read_jsonl(path))]
