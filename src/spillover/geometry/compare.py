"""Inducing vs control datasets: the tests a geometry report runs at one layer, alone or over several reports.

``compare_groups`` compares the datasets of one report; ``pooled_comparison`` pools several reports (e.g.
organism seeds) with labels permuted within (report, pair) strata. Both test at two levels:

* feature level: the nearest-toxic cosines of the inducing datasets' latents vs the controls' latents
  (shared latents excluded, as in the paper), a stratified permutation test and a Mann-Whitney U test;
* dataset level: per pair, inducing minus control of ``proximity``, ``mean_max``, ``mean_diff`` and
  ``toxic_activation``, with an exact sign-flip test over pairs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from spillover.geometry.stats import mann_whitney, permutation_test, sign_flip_test

__all__ = ["PAIRED_METRICS", "compare_groups", "pooled_comparison"]

PAIRED_METRICS = ("proximity", "mean_max", "mean_diff", "toxic_activation")
"""Per-dataset measures compared pair by pair (inducing minus control)."""


def _metric(entry: Mapping[str, Any], metric: str) -> float:
    if metric in ("proximity", "mean_max", "mean"):
        value = entry["geometry"][metric]
    else:
        value = entry[metric]
    return float(value) if value is not None else math.nan


def _feature_level(
    a_vals: list[float],
    b_vals: list[float],
    a_str: list[object],
    b_str: list[object],
    *,
    n_permutations: int,
    seed: int,
) -> dict[str, Any]:
    return {
        "mean_inducing": sum(a_vals) / len(a_vals) if a_vals else math.nan,
        "mean_control": sum(b_vals) / len(b_vals) if b_vals else math.nan,
        "permutation": permutation_test(
            a_vals, b_vals, strata_a=a_str, strata_b=b_str, n_permutations=n_permutations, seed=seed
        ).as_dict(),
        "mann_whitney": mann_whitney(a_vals, b_vals).as_dict(),
    }


def _paired(diffs: Mapping[str, list[float]], seed: int) -> dict[str, Any]:
    return {m: {"differences": d, "test": sign_flip_test(d, seed=seed).as_dict()} for m, d in diffs.items()}


def compare_groups(
    per_dataset: Mapping[str, Mapping[str, Any]],
    pairs: Sequence[tuple[str, str]],
    inducing: Sequence[str],
    controls: Sequence[str],
    *,
    n_permutations: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Inducing vs control at one layer of one report: feature-level and dataset-level tests.

    Args:
        per_dataset: the layer's ``datasets`` entries of a geometry report.
        pairs: ``(inducing, control)`` names; the permutation test is stratified by pair.
        inducing: every inducing dataset.
        controls: every control dataset.
        n_permutations: relabellings in the permutation test.
        seed: seeds the permutations and sign flips.
    """
    a_vals: list[float] = []
    b_vals: list[float] = []
    a_str: list[object] = []
    b_str: list[object] = []
    pair_of = {name: i for i, pair in enumerate(pairs) for name in pair}
    for name in inducing:
        vals = per_dataset[name]["geometry"]["max_cos"]
        a_vals += vals
        a_str += [pair_of.get(name, -1)] * len(vals)
    for name in controls:
        vals = per_dataset[name]["geometry"]["max_cos"]
        b_vals += vals
        b_str += [pair_of.get(name, -1)] * len(vals)
    out: dict[str, Any] = {
        "inducing": list(inducing),
        "controls": list(controls),
        "feature_level": _feature_level(
            a_vals, b_vals, a_str, b_str, n_permutations=n_permutations, seed=seed
        ),
    }
    if pairs:
        diffs = {
            m: [_metric(per_dataset[i], m) - _metric(per_dataset[c], m) for i, c in pairs]
            for m in PAIRED_METRICS
        }
        out["paired"] = _paired(diffs, seed)
    return out


def pooled_comparison(
    reports: Sequence[Mapping[str, Any]],
    layer: str,
    *,
    n_permutations: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Inducing vs control pooled over several reports (e.g. organism seeds), at one layer.

    Labels are permuted within (report, pair) strata; the paired differences are one per (report, pair).
    """
    a_vals: list[float] = []
    b_vals: list[float] = []
    a_str: list[object] = []
    b_str: list[object] = []
    diffs: dict[str, list[float]] = {m: [] for m in PAIRED_METRICS}
    for r, report in enumerate(reports):
        per_dataset = report["layers"][layer]["datasets"]
        for p, (ind, ctl) in enumerate(report["pairs"]):
            va = per_dataset[ind]["geometry"]["max_cos"]
            vb = per_dataset[ctl]["geometry"]["max_cos"]
            a_vals += va
            b_vals += vb
            a_str += [(r, p)] * len(va)
            b_str += [(r, p)] * len(vb)
            for m in diffs:
                diffs[m].append(_metric(per_dataset[ind], m) - _metric(per_dataset[ctl], m))
    return {
        "layer": layer,
        "n_reports": len(reports),
        "feature_level": _feature_level(
            a_vals, b_vals, a_str, b_str, n_permutations=n_permutations, seed=seed
        ),
        "paired": _paired(diffs, seed),
    }
