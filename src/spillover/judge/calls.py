"""Plan the calls a set of answers needs (one per metric, deduplicated, cache-aware) and assemble scores.

Shared by the call-based judges (OpenAI-compatible API, local HF model) so that they key, cache and
score identically: every score is :func:`spillover.judge.prompts.score_from_raw` of a stored raw output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spillover.judge.aggregate import MIN_NUMERIC_MASS
from spillover.judge.base import JudgeItem, JudgeScore
from spillover.judge.cache import JudgeCache, cache_key
from spillover.judge.prompts import METRICS, prompt_hash, render_judge_prompt, score_from_raw

__all__ = ["CallPlan", "JudgeCall", "assemble_scores", "plan_calls"]


@dataclass(frozen=True)
class JudgeCall:
    """One judge request: the rendered prompt and the cache key it is stored under."""

    key: str
    prompt: str
    prompt_hash: str


@dataclass(frozen=True)
class CallPlan:
    per_item: list[dict[str, JudgeCall]]
    """For each item, metric -> call."""
    todo: list[JudgeCall]
    """Unique calls whose result is not cached yet, in first-use order."""
    cached: dict[str, dict[str, Any]]
    """Key -> stored raw output for the calls already in the cache."""


def plan_calls(
    items: Sequence[JudgeItem],
    namespace: str,
    *,
    cache: JudgeCache | None = None,
    metrics: Sequence[str] = METRICS,
) -> CallPlan:
    """The calls ``items`` need under judge identity ``namespace``.

    Raises:
        ValueError: an item has no judge prompt for a metric (names the question and the fix).
    """
    per_item: list[dict[str, JudgeCall]] = []
    unique: dict[str, JudgeCall] = {}
    for item in items:
        calls: dict[str, JudgeCall] = {}
        for metric in metrics:
            template = item.judge_prompts.get(metric)
            if not template:
                raise ValueError(
                    f"question {item.question_id!r} has no {metric!r} judge prompt; add judge_prompts to "
                    "the question file or give judge.prompts_file (a YAML with aligned/coherent templates)"
                )
            ph = prompt_hash(template)
            call = JudgeCall(
                key=cache_key(namespace, ph, item.question, item.answer),
                prompt=render_judge_prompt(template, item.question, item.answer),
                prompt_hash=ph,
            )
            calls[metric] = call
            unique.setdefault(call.key, call)
        per_item.append(calls)
    cached = cache.get_many(list(unique)) if cache is not None else {}
    todo = [call for key, call in unique.items() if key not in cached]
    return CallPlan(per_item, todo, cached)


def assemble_scores(
    plan: CallPlan,
    results: Mapping[str, dict[str, Any]],
    *,
    judge: str,
    min_mass: float = MIN_NUMERIC_MASS,
    extra: Mapping[str, Any] | None = None,
) -> list[JudgeScore]:
    """One JudgeScore per item from the raw outputs (``results`` and the plan's cached ones).

    A call missing from both (never made) counts as failed: its score is None and its raw says why.
    """
    scores: list[JudgeScore] = []
    for calls in plan.per_item:
        raw: dict[str, Any] = {"judge": judge, **dict(extra or {})}
        values: dict[str, float | None] = {}
        for metric, call in calls.items():
            out = results.get(call.key) or plan.cached.get(call.key)
            if out is None:
                out = {"error": "no judge output (the call was never completed)"}
            raw[metric] = {**out, "prompt_hash": call.prompt_hash}
            values[metric] = score_from_raw(out, min_mass)
        scores.append(JudgeScore(aligned=values.get("aligned"), coherent=values.get("coherent"), raw=raw))
    return scores
