from __future__ import annotations

from spillover.report.frontier import plot_frontier


def _entry(em: float, ret: float) -> dict:
    return {"misaligned_rate": em, "ci": [em - 0.02, em + 0.02], "in_domain": ret}


def test_frontier_needs_a_filtering_section_with_retention() -> None:
    assert plot_frontier({}) is None
    assert plot_frontier({"filtering": {"unfiltered": {"misaligned_rate": 0.3}}}) is None


def test_frontier_draws_filters_arms_and_the_budget() -> None:
    section = {
        "dataset": "insecure_alltask",
        "retention_budget": 0.85,
        "retention_drop": 0.05,
        "unfiltered": _entry(0.4, 0.9),
        "geometry": {
            "by_fraction": {"0.25": _entry(0.2, 0.89), "0.5": _entry(0.1, 0.84)},
            "matched_retention": {"at_target": True, "retention": 0.85, "misaligned_rate": 0.12},
        },
    }
    png = plot_frontier({"filtering": section, "arms": {"short": _entry(0.3, 0.87)}})
    assert png is not None and png[:4] == b"\x89PNG"
    # arms alone, with no retention for the unfiltered run, still get a figure
    assert plot_frontier({"filtering": {"unfiltered": {}}, "arms": {"a": _entry(0.3, 0.8)}}) is not None
