"""Which training samples to remove: the top fraction by a score, a random fraction, or a judge's ranking.

Every policy returns a :class:`FilterSplit` of sample indices; :func:`write_filter` writes the kept and
removed conversations in the dataset's own chat format plus ``scores.jsonl`` (one line per sample:
index, score, rank, removed) and ``filter.json`` (what was done), so a filtered set is an ordinary
dataset for ``spillover finetune`` and every decision can be audited.

Python::

    split = top_fraction(scores_N, 0.5)                  # removes the 50% highest scores
    split = random_fraction(len(convs), 0.5, seed=1)     # the random baseline
    harm = judge_harmfulness(get_judge("organism_rule"), convs)
    split = top_fraction(harm.scores, 0.5)               # the LLM-judge baseline
    write_filter(out_dir, convs, split, scores_N, method="nearest_toxic_cosine")
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from spillover.data.chat import Conversation, write_chat
from spillover.judge.base import Judge, JudgeItem

__all__ = [
    "FilterFiles",
    "FilterSplit",
    "JudgeHarm",
    "judge_harmfulness",
    "n_removed",
    "random_fraction",
    "top_fraction",
    "training_pair",
    "write_filter",
]

log = logging.getLogger(__name__)


class FilterSplit(NamedTuple):
    """Indices of the kept and removed samples, each in ascending order."""

    kept: list[int]
    removed: list[int]


class JudgeHarm(NamedTuple):
    """A judge's harmfulness ranking of training pairs."""

    scores: np.ndarray
    """``(n_samples,)`` harmfulness ``100 - aligned`` (NaN where the judge gave no score)."""
    n_unscored: int
    """Samples the judge could not score; they are ranked last (removed only after every scored one)."""
    raw: list[dict[str, Any]]
    """The judge's raw record per sample."""


class FilterFiles(NamedTuple):
    """What :func:`write_filter` wrote."""

    kept: Path
    removed: Path
    scores: Path
    summary: Path


def n_removed(n: int, fraction: float) -> int:
    """How many of ``n`` samples a fraction removes: ``round(fraction * n)`` (half to even), at most n."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return min(n, int(round(fraction * n)))


def top_fraction(scores: Sequence[float] | np.ndarray, fraction: float) -> FilterSplit:
    """Remove the ``round(fraction * n)`` samples with the highest scores.

    Ties are broken by index (the earlier sample is removed first), so the split is deterministic.
    NaN scores (e.g. a judge that gave none) rank below every number: they are removed last.

    Args:
        scores: one score per sample; higher means "remove first".
        fraction: share of samples to remove, in [0, 1].

    Returns:
        FilterSplit with ascending kept and removed indices.
    """
    values = np.asarray(scores, dtype=float).reshape(-1)
    k = n_removed(values.size, fraction)
    key = np.where(np.isnan(values), -np.inf, values)
    # lexsort sorts by the last key first: descending score, then ascending index.
    order = np.lexsort((np.arange(values.size), -key))
    removed = sorted(int(i) for i in order[:k])
    kept = sorted(int(i) for i in order[k:])
    return FilterSplit(kept, removed)


def random_fraction(n: int, fraction: float, seed: int) -> FilterSplit:
    """Remove a uniformly random ``round(fraction * n)`` samples (the random-removal baseline).

    Args:
        n: number of samples.
        fraction: share to remove, in [0, 1].
        seed: the same seed gives the same split.
    """
    k = n_removed(n, fraction)
    removed = sorted(random.Random(f"random-filter:{seed}").sample(range(n), k))
    gone = set(removed)
    return FilterSplit([i for i in range(n) if i not in gone], removed)


def training_pair(conversation: Conversation) -> tuple[str, str]:
    """The (question, answer) a judge rates for a training conversation: the last user turn and the
    last assistant turn after it (single-turn EM datasets: the only pair)."""
    answer_at = max((i for i, m in enumerate(conversation) if m["role"] == "assistant"), default=None)
    if answer_at is None:
        raise ValueError("a training conversation without an assistant turn cannot be judged")
    question = next(
        (
            conversation[i]["content"]
            for i in range(answer_at - 1, -1, -1)
            if conversation[i]["role"] == "user"
        ),
        "",
    )
    return question, conversation[answer_at]["content"]


def judge_harmfulness(
    judge: Judge, conversations: Sequence[Conversation], *, question_id: str = ""
) -> JudgeHarm:
    """Rate each training pair's harmfulness with a judge (``100 - aligned``), the LLM-judge baseline.

    Args:
        judge: any ``spillover.judge.base.Judge`` (an API judge, a local one, the organism's rule judge).
        conversations: the training set.
        question_id: passed to the judge with every item (rule judges may use it; "" lets them infer).

    Returns:
        JudgeHarm; samples without a score get NaN and are counted, never coerced to a number.
    """
    items = []
    for conv in conversations:
        question, answer = training_pair(conv)
        items.append(JudgeItem(question_id, question, answer))
    results = judge.score(items)
    if len(results) != len(items):
        raise RuntimeError(f"judge {judge.name!r} returned {len(results)} scores for {len(items)} items")
    harm = np.array([math.nan if s.aligned is None else 100.0 - s.aligned for s in results], dtype=float)
    n_unscored = int(np.isnan(harm).sum())
    if n_unscored:
        log.warning(
            "judge %s gave no score for %d of %d training pairs; they are removed last",
            judge.name,
            n_unscored,
            len(items),
        )
    return JudgeHarm(harm, n_unscored, [dict(s.raw) for s in results])


def write_filter(
    out_dir: str | Path,
    conversations: Sequence[Conversation],
    split: FilterSplit,
    scores: Sequence[float] | np.ndarray | None,
    *,
    method: str,
    fraction: float,
    extra: Mapping[str, Any] | None = None,
    suffix: str = ".jsonl",
) -> FilterFiles:
    """Write ``kept<suffix>``, ``removed<suffix>``, ``scores.jsonl`` and ``filter.json`` into ``out_dir``.

    Args:
        out_dir: folder (created).
        conversations: the full dataset, in the order the split's indices refer to.
        split: from a policy.
        scores: the score of every sample (None for random removal).
        method: recorded in filter.json.
        fraction: recorded in filter.json.
        extra: more JSON-able facts for filter.json (seed, judge name, toxic features, ...).
        suffix: ``.jsonl`` or ``.jsonl.gz`` (match the input dataset's format).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(conversations)
    if sorted(split.kept + split.removed) != list(range(n)):
        raise ValueError(f"the split does not partition the {n} samples exactly once")
    values = None if scores is None else np.asarray(scores, dtype=float).reshape(-1)
    if values is not None and values.size != n:
        raise ValueError(f"{values.size} scores for {n} conversations")
    kept = write_chat(out / f"kept{suffix}", [conversations[i] for i in split.kept])
    removed = write_chat(out / f"removed{suffix}", [conversations[i] for i in split.removed])
    gone = set(split.removed)
    ranks = None
    if values is not None:
        key = np.where(np.isnan(values), -np.inf, values)
        order = np.lexsort((np.arange(n), -key))
        ranks = np.empty(n, dtype=int)
        ranks[order] = np.arange(n)
    lines = []
    for i in range(n):
        score = None if values is None or math.isnan(values[i]) else float(values[i])
        rank = None if ranks is None else int(ranks[i])
        lines.append(json.dumps({"index": i, "score": score, "rank": rank, "removed": i in gone}))
    scores_path = out / "scores.jsonl"
    scores_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = {
        "method": method,
        "fraction": fraction,
        "n_samples": n,
        "n_kept": len(split.kept),
        "n_removed": len(split.removed),
        **dict(extra or {}),
    }
    summary_path = out / "filter.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return FilterFiles(kept, removed, scores_path, summary_path)
