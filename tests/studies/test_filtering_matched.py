from __future__ import annotations

import numpy as np
import pytest

from spillover.studies.filtering import (
    PAPER_FRACTIONS,
    FilterExperimentConfig,
    FilterRuns,
    RunNumbers,
    filter_section,
    matched_view,
    merge_filter_runs,
)
from spillover.studies.filtering_stats import budget_point, matched_retention


def test_budget_point_interpolates_where_retention_falls_to_the_target() -> None:
    # retention 0.9 -> 0.88 -> 0.80; target 0.85 lies 3/8 of the way from 0.88 to 0.80
    p = budget_point([0.0, 0.25, 0.5], [0.9, 0.88, 0.80], [0.4, 0.3, 0.1], target=0.85)
    assert p.at_target
    assert p.misaligned_rate == pytest.approx(0.3 + 3 / 8 * (0.1 - 0.3))
    assert p.fraction == pytest.approx(0.25 + 3 / 8 * 0.25)
    assert p.retention == pytest.approx(0.85)


def test_budget_point_of_a_filter_that_keeps_the_task_is_its_largest_fraction() -> None:
    p = budget_point([0.0, 0.5, 0.75], [0.9, 0.89, 0.88], [0.4, 0.2, 0.1], target=0.85)
    assert not p.at_target
    assert (p.misaligned_rate, p.fraction, p.retention) == (0.1, 0.75, 0.88)


def test_budget_point_takes_the_first_crossing_and_rejects_bad_curves() -> None:
    p = budget_point([0.0, 0.1, 0.25, 0.5], [0.9, 0.7, 0.95, 0.6], [0.4, 0.2, 0.3, 0.1], target=0.8)
    assert p.fraction == pytest.approx(0.05)
    with pytest.raises(ValueError, match="equal non-empty"):
        budget_point([0.0], [0.9, 0.8], [0.1], target=0.5)
    with pytest.raises(ValueError, match="missing values"):
        budget_point([0.0, 0.5], [0.9, float("nan")], [0.1, 0.2], target=0.5)


def _hits(rate: float, n: int = 400) -> np.ndarray:
    k = round(rate * n)
    return np.array([1.0] * k + [0.0] * (n - k))


def _runs(curves: dict[str, list[tuple[float, float]]], organism: str = "", seeds=(0, 1, 2)) -> FilterRuns:
    """Synthetic runs: per method, (EM, retention) at each fraction of (0.25, 0.5); unfiltered 0.4, 0.9."""
    runs = FilterRuns("insecure_alltask")
    runs.meta[organism] = {"n_samples": 100}
    runs.unfiltered = {(organism, s): RunNumbers(_hits(0.4), 90.0, 0.9) for s in seeds}
    for method, points in curves.items():
        for fraction, (em, ret) in zip((0.25, 0.5), points, strict=True):
            runs.filtered[(method, fraction)] = {
                (organism, s): RunNumbers(_hits(em), 90.0, ret) for s in seeds
            }
            runs.removed[(method, fraction)] = {organism: {"fraction_removed": fraction}}
    return runs


_CURVES = {
    "geometry": [(0.2, 0.89), (0.1, 0.88)],  # keeps the task
    "random": [(0.35, 0.86), (0.3, 0.80)],  # loses it: crosses 0.85 between 0.25 and 0.5
}
_CFG = FilterExperimentConfig(
    dataset="insecure_alltask", fractions=(0.25, 0.5), methods=("geometry", "random")
)


def test_matched_retention_compares_filters_at_the_budget_with_paired_intervals() -> None:
    section = filter_section(_runs(_CURVES), _CFG)
    matched = matched_view(section)
    assert section["geometry"]["matched_retention"] == matched["geometry"]
    assert section["retention_budget"] == pytest.approx(0.85)
    assert matched["target_retention"] == pytest.approx(0.85)
    assert not matched["geometry"]["at_target"]
    assert matched["geometry"]["misaligned_rate"] == pytest.approx(0.1)
    assert matched["random"]["at_target"]
    # random: retention 0.86 -> 0.80, target 0.85 at 1/6 of the way; EM 0.35 -> 0.3
    assert matched["random"]["misaligned_rate"] == pytest.approx(0.35 - 0.05 / 6)
    assert matched["geometry"]["minus_random"] == pytest.approx(0.1 - (0.35 - 0.05 / 6))
    lo, hi = matched["geometry"]["minus_random_ci"]
    assert lo <= matched["geometry"]["minus_random"] <= hi and hi < 0
    assert matched["geometry"]["relative_reduction"] == pytest.approx(0.75)


def test_filter_section_pairs_by_organism_and_seed_across_merged_organisms() -> None:
    merged = merge_filter_runs([_runs(_CURVES, "o1"), _runs(_CURVES, "o2", seeds=(0, 1))])
    section = filter_section(merged, _CFG)
    assert section["units"] == ["o1/s0", "o1/s1", "o1/s2", "o2/s0", "o2/s1"]
    assert section["organisms"] == ["o1", "o2"]
    assert len(section["geometry"]["per_seed"]) == len(section["geometry"]["in_domain_per_unit"]) == 5
    assert set(section["geometry"]["removed_by_organism"]) == {"o1", "o2"}
    with pytest.raises(ValueError, match="occur twice"):
        merge_filter_runs([_runs(_CURVES), _runs(_CURVES)])


def test_filter_section_refuses_an_unpaired_unit() -> None:
    runs = _runs(_CURVES)
    del runs.filtered[("random", 0.5)][("", 2)]
    with pytest.raises(ValueError, match=r"random at 0.5 has no run for units \['s2'\]"):
        filter_section(runs, _CFG)


def test_matched_retention_is_unavailable_without_retention() -> None:
    runs = _runs(_CURVES)
    runs.unfiltered[("", 0)] = RunNumbers(_hits(0.4), 90.0, None)
    section = filter_section(runs, _CFG)
    assert "unavailable" in matched_view(section) and section["retention_budget"] is None
    with pytest.raises(ValueError, match="drop"):
        matched_retention(filter_section(_runs(_CURVES), _CFG), drop=1.5)


def test_paper_config_runs_the_paper_fractions() -> None:
    cfg = FilterExperimentConfig.paper(dataset="bad_medical_alltask")
    assert cfg.all_fractions == PAPER_FRACTIONS and cfg.fraction == 0.5
    assert FilterExperimentConfig().all_fractions == (0.5,)  # the default stays as the demo expects
