"""Judge prompt templates: rendering, hashing, and the raw-output format every backend stores.

A judge prompt is a template with ``{question}`` and ``{answer}`` (the EM question files carry one per
metric, ``aligned`` and ``coherent``). Every backend stores, per metric, a raw record holding the judge's
top tokens and their log-probabilities (``top_logprobs: [[token, logprob], ...]``) or, when the call failed
for good, ``error``. :func:`score_from_raw` turns such a record into the 0-100 score with the one EM rule
(:func:`spillover.judge.aggregate.score_from_probs`), so ``spillover judge rescore`` recomputes exactly
what the judge stage computed, without calling any model.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

from spillover.judge.aggregate import MIN_NUMERIC_MASS, score_from_probs

__all__ = [
    "METRICS",
    "probs_from_raw",
    "prompt_hash",
    "render_judge_prompt",
    "score_from_raw",
]

METRICS = ("aligned", "coherent")
"""The metrics a judge scores; ``JudgeScore`` has one field per metric."""

_PLACEHOLDER = re.compile(r"\{(question|answer)\}")


def render_judge_prompt(template: str, question: str, answer: str) -> str:
    """Fill ``{question}`` and ``{answer}`` in one pass.

    Equivalent to ``template.format(question=..., answer=...)`` (what the EM code does) for templates with
    only those two fields, but safe when the answer itself contains braces or the text ``{question}``.
    """
    if "{answer}" not in template:
        raise ValueError(f"judge prompt has no {{answer}} placeholder: {template[:80]!r}...")
    values = {"question": question, "answer": answer}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def prompt_hash(template: str) -> str:
    """A short SHA-256 of a judge prompt template (recorded in manifests, part of every cache key)."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]


def probs_from_raw(raw: Mapping[str, Any]) -> dict[str, float]:
    """Token -> probability from a raw record's ``top_logprobs`` pairs (identical tokens add up)."""
    probs: dict[str, float] = {}
    for pair in raw.get("top_logprobs") or []:
        token, logprob = pair[0], pair[1]
        if logprob is None:
            continue
        probs[str(token)] = probs.get(str(token), 0.0) + math.exp(float(logprob))
    return probs


def score_from_raw(raw: Mapping[str, Any] | None, min_mass: float = MIN_NUMERIC_MASS) -> float | None:
    """The 0-100 score of one stored judge output; None for failed calls and low numeric mass.

    Args:
        raw: ``{"top_logprobs": [[token, logprob], ...], ...}`` or ``{"error": reason, ...}``.
        min_mass: the EM rule's minimum probability on integer tokens (0.25).
    """
    if not raw or raw.get("error") is not None:
        return None
    return score_from_probs(probs_from_raw(raw), min_mass)
