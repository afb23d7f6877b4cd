"""Filtered sets: apply a filter method at a fraction and write what it keeps and removes.

A method is ``random`` (a seeded random split) or the name of a score whose top fraction is removed
(:data:`METHOD_SCORES` maps the built-in methods to their scores; any other name is a score of its own,
e.g. ``score`` for precomputed scores). :func:`apply_filter` writes one set into a folder,
:func:`apply_filters` a grid of them as ``<method>/f<fraction>[/s<seed>]``, each an ordinary dataset
with ``scores.jsonl`` and ``filter.json`` (see :func:`spillover.filtering.policies.write_filter`).

Python::

    scores = read_scores_json(scores_dir)                 # a filter_scores stage's scores.json
    apply_filter(out, convs, "geometry", 0.5, scores=scores)
    apply_filters(out, convs, methods=["geometry", "random"], fractions=[0.5], seeds=[0, 1], scores=scores)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spillover.data.chat import Conversation
from spillover.data.jsonl import iter_jsonl
from spillover.filtering.policies import FilterFiles, random_fraction, top_fraction, write_filter

__all__ = [
    "FILTER_METHODS",
    "METHOD_SCORES",
    "apply_filter",
    "apply_filters",
    "read_sample_scores",
    "read_scores_json",
    "save_scores",
    "score_arrays",
    "set_name",
]

METHOD_SCORES: dict[str, str] = {
    "geometry": "nearest_toxic_cosine",
    "toxic_activation": "toxic_activation",
    "toxic_subspace": "toxic_subspace",
    "persona_projection": "persona_projection",
    "judge": "judge",
}
"""Filter method -> the score it removes the top of (``random`` has none)."""
FILTER_METHODS: tuple[str, ...] = (*METHOD_SCORES, "random")
"""Every built-in filter method."""


def set_name(method: str, fraction: float, seed: int | None) -> str:
    """The folder of one set inside a grid: ``<method>/f<fraction>[/s<seed>]``."""
    return f"{method}/f{fraction:g}" + (f"/s{seed}" if seed is not None else "")


def score_arrays(scores: Mapping[str, Sequence[float | None]]) -> dict[str, np.ndarray]:
    """Score lists (None where a sample has no score) as float arrays with NaN for None."""
    return {
        name: np.array([np.nan if v is None else v for v in values], dtype=float)
        for name, values in scores.items()
    }


def read_scores_json(scores_dir: Path) -> dict[str, np.ndarray]:
    """The per-sample scores of a ``filter_scores`` stage folder (its ``scores.json``)."""
    return score_arrays(json.loads((scores_dir / "scores.json").read_text())["scores"])


def save_scores(path: Path, scores: Mapping[str, np.ndarray]) -> Path:
    """Write ``{score name: [value or null per sample]}`` as JSON (NaN becomes null)."""
    path.write_text(
        json.dumps({k: [None if math.isnan(x) else float(x) for x in v] for k, v in scores.items()})
    )
    return path


def read_sample_scores(path: Path, n: int) -> np.ndarray:
    """Precomputed scores, one JSON number (or ``{"score": number}``, or null) per line, for ``n`` samples.

    Raises:
        ValueError: naming the file and line of a value that is not a number, or a count that is not ``n``.
        FileNotFoundError: the file does not exist.
    """
    values: list[float] = []
    for where, item in iter_jsonl(path):
        value = item.get("score") if isinstance(item, dict) else item
        if value is None:
            values.append(math.nan)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values.append(float(value))
        else:
            raise ValueError(
                f'{where}: expected a number or {{"score": number}}, got {json.dumps(item)[:60]!r}'
            )
    if len(values) != n:
        raise ValueError(f"{path} has {len(values)} scores but the dataset has {n} conversations")
    return np.array(values, dtype=float)


def apply_filter(
    out_dir: Path,
    conversations: Sequence[Conversation],
    method: str,
    fraction: float,
    *,
    scores: Mapping[str, np.ndarray] | None = None,
    seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
    suffix: str = ".jsonl",
) -> FilterFiles:
    """Split ``conversations`` by one method at one fraction and write the sets into ``out_dir``.

    Args:
        out_dir: folder of the set (created).
        conversations: the dataset, in the order of the scores.
        method: ``random``, a key of :data:`METHOD_SCORES`, or the name of a score in ``scores``.
        fraction: share removed, in [0, 1].
        scores: score name -> ``(n_samples,)`` values (NaN: no score, removed last); not used by random.
        seed: the random split's seed (``random`` only).
        extra: more facts for ``filter.json`` (after ``seed`` or ``score``).
        suffix: ``.jsonl`` or ``.jsonl.gz``.

    Raises:
        KeyError: the method's score is not in ``scores``.
    """
    facts: dict[str, Any]
    values: np.ndarray | None
    if method == "random":
        if seed is None:
            raise ValueError("the random filter needs a seed")
        split, values, facts = random_fraction(len(conversations), fraction, seed), None, {"seed": seed}
    else:
        key = METHOD_SCORES.get(method, method)
        if scores is None or key not in scores:
            raise KeyError(
                f"filter method {method!r} ranks by {key!r} scores, which were not computed; "
                f"have {sorted(scores or {})}"
            )
        values = scores[key]
        split, facts = top_fraction(values, fraction), {"score": key}
    return write_filter(
        out_dir,
        conversations,
        split,
        values,
        method=method,
        fraction=fraction,
        extra={**facts, **dict(extra or {})},
        suffix=suffix,
    )


def apply_filters(
    out_dir: Path,
    conversations: Sequence[Conversation],
    *,
    methods: Sequence[str],
    fractions: Sequence[float],
    seeds: Sequence[int],
    scores: Mapping[str, np.ndarray] | None = None,
    extra: Mapping[str, Any] | None = None,
    suffix: str = ".jsonl",
) -> list[Path]:
    """Every set of a grid of methods and fractions into ``out_dir/<method>/f<fraction>[/s<seed>]``.

    Score-based sets do not depend on the seed; random sets get one split per seed. Sets are written
    fraction by fraction, method by method; returns their folders in that order.
    """
    written = []
    for fraction in fractions:
        for method in methods:
            method_seeds: Sequence[int | None] = seeds if method == "random" else (None,)
            for seed in method_seeds:
                folder = out_dir / set_name(method, fraction, seed)
                apply_filter(
                    folder,
                    conversations,
                    method,
                    fraction,
                    scores=scores,
                    seed=seed,
                    extra=extra,
                    suffix=suffix,
                )
                written.append(folder)
    return written
