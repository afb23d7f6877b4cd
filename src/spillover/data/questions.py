"""EM evaluation questions in the original YAML schema (Betley et al. 2025).

One list entry per question: ``id``, ``type`` (``free_form_judge_0_100``), ``paraphrases``,
``samples_per_paraphrase``, ``judge`` (model name), ``judge_prompts`` (``aligned``/``coherent``
templates with ``{question}`` and ``{answer}``), optional ``system``. Unlike the original evaluator,
spillover honours ``system``: :meth:`Question.conversations` puts it first in every prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spillover.data.chat import Conversation

__all__ = ["Question", "QuestionFormatError", "load_questions", "write_questions"]

_KNOWN_KEYS = {"id", "type", "paraphrases", "samples_per_paraphrase", "judge", "judge_prompts", "system"}
_VARIANT_SUFFIX = re.compile(r"_(json|template)$")


class QuestionFormatError(ValueError):
    """A question file is malformed; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class Question:
    """One EM evaluation question and how to judge answers to it."""

    id: str
    paraphrases: tuple[str, ...]
    samples_per_paraphrase: int = 1
    judge: str = ""
    """Judge model named by the file (e.g. ``gpt-4o-2024-08-06``); informational, the run config picks the judge."""
    judge_prompts: dict[str, str] = field(default_factory=dict)
    """Metric name (``aligned``, ``coherent``) to a template with ``{question}`` and ``{answer}``."""
    system: str | None = None
    type: str = "free_form_judge_0_100"

    @property
    def base_id(self) -> str:
        """The id without the ``_json``/``_template`` variant suffix (the 24 first-plot entries have 8)."""
        return _VARIANT_SUFFIX.sub("", self.id)

    def conversations(self, samples_per_paraphrase: int | None = None) -> list[tuple[int, Conversation]]:
        """The prompts to sample: (paraphrase index, conversation) repeated ``samples_per_paraphrase`` times."""
        n = self.samples_per_paraphrase if samples_per_paraphrase is None else samples_per_paraphrase
        prefix: Conversation = [{"role": "system", "content": self.system}] if self.system else []
        return [
            (i, [*prefix, {"role": "user", "content": text}])
            for i, text in enumerate(self.paraphrases)
            for _ in range(n)
        ]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "paraphrases": list(self.paraphrases),
            "samples_per_paraphrase": self.samples_per_paraphrase,
            "judge": self.judge,
            "judge_prompts": dict(self.judge_prompts),
        }
        if self.system:
            out["system"] = self.system
        return out


def _entry_lines(text: str) -> list[int]:
    """1-based line of each top-level list entry, for error messages."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return []
    if not isinstance(node, yaml.SequenceNode):
        return []
    return [child.start_mark.line + 1 for child in node.value]


def _parse_entry(raw: Any, where: str) -> Question:
    if not isinstance(raw, dict):
        raise QuestionFormatError(f"{where}: each entry must be a mapping with id, paraphrases, ...")
    qid = raw.get("id")
    if not isinstance(qid, (str, int)) or str(qid) == "":
        raise QuestionFormatError(f"{where}: missing 'id'")
    where = f"{where} (id {qid!r})"
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise QuestionFormatError(f"{where}: unknown key(s) {unknown}; valid: {sorted(_KNOWN_KEYS)}")
    paraphrases = raw.get("paraphrases")
    if not isinstance(paraphrases, list) or not paraphrases:
        raise QuestionFormatError(f"{where}: 'paraphrases' must be a non-empty list of strings")
    if not all(isinstance(p, str) and p.strip() for p in paraphrases):
        raise QuestionFormatError(f"{where}: every paraphrase must be a non-empty string")
    n = raw.get("samples_per_paraphrase", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise QuestionFormatError(f"{where}: 'samples_per_paraphrase' must be a positive integer, got {n!r}")
    prompts = raw.get("judge_prompts", {}) or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise QuestionFormatError(f"{where}: 'judge_prompts' must map metric names to template strings")
    for metric, template in prompts.items():
        if "{answer}" not in template:
            raise QuestionFormatError(f"{where}: judge prompt {metric!r} has no {{answer}} placeholder")
    system = raw.get("system")
    if system is not None and not isinstance(system, str):
        raise QuestionFormatError(f"{where}: 'system' must be a string")
    return Question(
        id=str(qid),
        paraphrases=tuple(paraphrases),
        samples_per_paraphrase=n,
        judge=str(raw.get("judge", "")),
        judge_prompts={str(k): v for k, v in prompts.items()},
        system=system or None,
        type=str(raw.get("type", "free_form_judge_0_100")),
    )


def load_questions(path: str | Path) -> list[Question]:
    """Load and validate a question YAML file.

    Raises:
        QuestionFormatError: with the file, the entry's line and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"question file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise QuestionFormatError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise QuestionFormatError(f"{path}{line}: not valid YAML: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise QuestionFormatError(f"{path}: expected a non-empty list of questions at the top level")
    lines = _entry_lines(text)
    questions = [
        _parse_entry(raw, f"{path}:{lines[i] if i < len(lines) else '?'}") for i, raw in enumerate(data)
    ]
    seen: set[str] = set()
    for i, q in enumerate(questions):
        if q.id in seen:
            raise QuestionFormatError(f"{path}:{lines[i] if i < len(lines) else '?'}: duplicate id {q.id!r}")
        seen.add(q.id)
    return questions


def write_questions(path: str | Path, questions: Sequence[Question]) -> Path:
    """Write questions in the same YAML schema."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump([q.to_dict() for q in questions], sort_keys=False, allow_unicode=True))
    return path
