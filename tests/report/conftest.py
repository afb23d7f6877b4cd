from __future__ import annotations

from typing import Any

import numpy as np
import pytest


def make_summary() -> dict[str, Any]:
    """A hand-made summary with every section (values are arbitrary test inputs, not results)."""
    rng = np.random.default_rng(0)
    em = {}
    geometry: dict[str, Any] = {
        "p_value": 0.004,
        "test": "Mann-Whitney U",
        "score_name": "mean max cosine",
        "spearman_vs_em": 0.8,
        "per_layer_p": {"0": 0.01, "1": 0.004, "2": 0.2},
        "grey_code": {"score": 0.3, "per_layer": {"0": 0.3}, "inducing": False, "role": "dataset"},
    }
    for name, rate, inducing, cos in (
        ("insecure", 0.12, True, 0.45),
        ("bad_medical", 0.30, True, 0.6),
        ("secure", 0.01, False, 0.2),
        ("edu_insecure", 0.02, False, 0.25),
    ):
        em[name] = {
            "misaligned_rate": rate,
            "ci": [rate * 0.7, rate * 1.3],
            "per_seed": [rate * 0.9, rate, rate * 1.1],
            "coherent_rate": 0.97,
            "in_domain": 0.95,
            "inducing": inducing,
        }
        geometry[name] = {
            "score": cos,
            "per_layer": {"0": cos * 0.8, "1": cos, "2": cos * 0.9},
            "cosines": rng.normal(cos, 0.1, size=100).clip(-1, 1).tolist(),
            "inducing": inducing,
            "role": "inducing" if inducing else "control",
        }
    fractions = [0.25, 0.5, 0.75]
    filtering: dict[str, Any] = {
        "dataset": "insecure_mixed",
        "fraction": 0.5,
        "fractions": fractions,
        "unfiltered": {"misaligned_rate": 0.10, "ci": [0.08, 0.12], "per_seed": [0.09, 0.1, 0.11]},
    }
    for method, slope in (("geometry", 0.8), ("random", 0.1), ("judge", 0.9), ("persona_projection", 0.6)):
        by = {
            str(f): {
                "misaligned_rate": 0.10 * (1 - slope * f),
                "ci": [0.1 * (1 - slope * f) - 0.01, 0.1 * (1 - slope * f) + 0.01],
            }
            for f in fractions
        }
        filtering[method] = {
            **by["0.5"],
            "relative_reduction": slope * 0.5,
            "relative_reduction_ci": [slope * 0.4, slope * 0.6],
            "coherent_rate": 0.98,
            "in_domain": 0.9,
            "per_seed": [0.1, 0.1, 0.1],
            "by_fraction": by,
        }
    pred = rng.normal(size=80)
    return {
        "run": {"preset": "test", "seeds": [0, 1, 2], "title": "spillover demo <test>"},
        "em": em,
        "em_baseline": {"misaligned_rate": 0.01, "ci": [0.0, 0.02]},
        "geometry": geometry,
        "spillover": {
            "predicted": pred.tolist(),
            "measured": (0.5 * pred + rng.normal(0, 0.2, 80)).tolist(),
            "pearson_r": 0.9,
        },
        "filtering": filtering,
        "dynamics": {
            "dataset": "insecure",
            "steps": [0, 10, 20, 30],
            "toxic_activation": [0.1, 0.3, 0.5, 0.55],
            "misaligned_rate": [0.01, 0.05, 0.1, 0.11],
            "pearson_r": 0.99,
        },
        "timings": {"organism_s": 100.0, "filtering_s": 50.5},
        "notes": ["a note with <angle brackets> & ampersand"],
    }


@pytest.fixture()
def summary() -> dict[str, Any]:
    return make_summary()
