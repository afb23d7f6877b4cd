"""Geometry-aware filtering of fine-tuning data, with its random and judge baselines (method.md step 8).

    spillover filter data.jsonl --model M --sae S --toxic T --benign B --out filtered/

Python::

    from spillover.filtering import apply_filter, nearest_toxic_cosine, score_dataset, top_fraction

The organism's filtering experiment (filter, fine-tune, evaluate) is ``spillover.studies.filtering``.

Public names are imported lazily so that ``spillover --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SCORE_METHODS": "scores",
    "diff_of_means_direction": "scores",
    "max_cosine_to_toxic": "scores",
    "nearest_toxic_cosine": "scores",
    "persona_projection": "scores",
    "toxic_activation": "scores",
    "toxic_subspace": "scores",
    "FilterSplit": "policies",
    "JudgeHarm": "policies",
    "judge_harmfulness": "policies",
    "random_fraction": "policies",
    "top_fraction": "policies",
    "write_filter": "policies",
    "SampleFeatures": "features",
    "ToxicReference": "features",
    "sample_features": "features",
    "score_samples": "features",
    "toxic_reference": "features",
    "FILTER_METHODS": "sets",
    "METHOD_SCORES": "sets",
    "apply_filter": "sets",
    "apply_filters": "sets",
    "DatasetScores": "scoring",
    "check_scoring_inputs": "scoring",
    "score_dataset": "scoring",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spillover.filtering' has no attribute {name!r}")
    return getattr(importlib.import_module(f"spillover.filtering.{_EXPORTS[name]}"), name)
