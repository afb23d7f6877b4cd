"""Feature geometry: how close a dataset's SAE features sit to toxic features, per layer, with statistics.

Python::

    from spillover.geometry import geometry_report, score_datasets, dataset_features, toxic_features
    result = geometry_report(model, tokenizer, saes, {"insecure": a, "secure": b},
                             toxic=tox, benign=ben, pairs=[("insecure", "secure")])

CLI: ``spillover geometry --model DIR --sae SPEC --dataset a.jsonl --control b.jsonl --toxic t.jsonl --benign b.jsonl``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spillover.geometry.compare import compare_groups, pooled_comparison
    from spillover.geometry.features import (
        Aggregate,
        FeatureSet,
        FeatureStats,
        Selection,
        dataset_features,
        default_top_k,
        score_datasets,
        select_features,
        toxic_features,
    )
    from spillover.geometry.report import (
        GeometryConfig,
        GeometryResult,
        geometry_report,
        write_geometry_report,
    )
    from spillover.geometry.risk import RISK_DEFINITION, RiskMeasure, risk_score
    from spillover.geometry.similarity import (
        GeometrySummary,
        cosine,
        cosine_matrix,
        excess_toxic_activation,
        feature_geometry,
        mean_difference_direction,
        mean_difference_score,
    )
    from spillover.geometry.stats import (
        NullResult,
        TestResult,
        mann_whitney,
        permutation_test,
        random_set_null,
        sign_flip_test,
    )
    from spillover.geometry.validate import context_snippets, logit_lens

# Imported on first use, so `spillover --help` does not pay for torch here.
_EXPORTS = {
    "Aggregate": "spillover.geometry.features",
    "FeatureSet": "spillover.geometry.features",
    "FeatureStats": "spillover.geometry.features",
    "Selection": "spillover.geometry.features",
    "dataset_features": "spillover.geometry.features",
    "default_top_k": "spillover.geometry.features",
    "score_datasets": "spillover.geometry.features",
    "select_features": "spillover.geometry.features",
    "toxic_features": "spillover.geometry.features",
    "GeometryConfig": "spillover.geometry.report",
    "GeometryResult": "spillover.geometry.report",
    "compare_groups": "spillover.geometry.compare",
    "geometry_report": "spillover.geometry.report",
    "pooled_comparison": "spillover.geometry.compare",
    "write_geometry_report": "spillover.geometry.report",
    "RISK_DEFINITION": "spillover.geometry.risk",
    "RiskMeasure": "spillover.geometry.risk",
    "risk_score": "spillover.geometry.risk",
    "GeometrySummary": "spillover.geometry.similarity",
    "cosine": "spillover.geometry.similarity",
    "cosine_matrix": "spillover.geometry.similarity",
    "feature_geometry": "spillover.geometry.similarity",
    "mean_difference_direction": "spillover.geometry.similarity",
    "mean_difference_score": "spillover.geometry.similarity",
    "excess_toxic_activation": "spillover.geometry.similarity",
    "NullResult": "spillover.geometry.stats",
    "TestResult": "spillover.geometry.stats",
    "mann_whitney": "spillover.geometry.stats",
    "permutation_test": "spillover.geometry.stats",
    "random_set_null": "spillover.geometry.stats",
    "sign_flip_test": "spillover.geometry.stats",
    "context_snippets": "spillover.geometry.validate",
    "logit_lens": "spillover.geometry.validate",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RISK_DEFINITION",
    "Aggregate",
    "FeatureSet",
    "FeatureStats",
    "GeometryConfig",
    "GeometryResult",
    "GeometrySummary",
    "NullResult",
    "RiskMeasure",
    "Selection",
    "TestResult",
    "compare_groups",
    "context_snippets",
    "cosine",
    "cosine_matrix",
    "dataset_features",
    "default_top_k",
    "feature_geometry",
    "geometry_report",
    "logit_lens",
    "mann_whitney",
    "mean_difference_direction",
    "mean_difference_score",
    "permutation_test",
    "pooled_comparison",
    "random_set_null",
    "risk_score",
    "score_datasets",
    "select_features",
    "sign_flip_test",
    "excess_toxic_activation",
    "toxic_features",
    "write_geometry_report",
]
