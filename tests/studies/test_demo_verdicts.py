"""Pooling over organisms x seeds and the demo's verdicts, on numbers made up to make each claim hold or fail."""

from __future__ import annotations

import numpy as np
import pytest

from spillover.studies.demo.pooled import (
    combine_pvalues,
    geometry_vs_others,
    hits_from_entry,
    paired_difference,
    spearman_with_p,
)
from spillover.studies.demo.verdicts import verdicts
from spillover.studies.filtering_stats import paired_bootstrap, rate_with_ci


def _hits(*counts: tuple[int, int]) -> list[np.ndarray]:
    return [np.r_[np.ones(k), np.zeros(n - k)] for k, n in counts]


def test_hits_rebuilt_from_an_entry_give_the_same_interval():
    hits = _hits((3, 100), (7, 100), (0, 80))
    entry = rate_with_ci(hits)
    assert [(h.sum(), h.size) for h in hits_from_entry(entry)] == [(3, 100), (7, 100), (0, 80)]
    assert rate_with_ci(hits_from_entry(entry)) == entry


def test_paired_difference_separates_a_real_gap_and_not_noise():
    strong = paired_difference(_hits((20, 100), (25, 100), (18, 100)), _hits((2, 100), (3, 100), (1, 100)))
    assert strong["difference_ci"][0] > 0 and strong["ratio"] > 5
    noise = paired_difference(_hits((3, 100), (4, 100), (2, 100)), _hits((3, 100), (2, 100), (4, 100)))
    assert noise["difference_ci"][0] < 0 < noise["difference_ci"][1]
    with pytest.raises(ValueError, match="same non-zero number"):
        paired_difference(_hits((1, 10)), _hits((1, 10), (2, 10)))


def test_stouffer_counts_organisms_that_point_the_other_way():
    assert combine_pvalues([0.04, 0.04, 0.04]) < 0.04  # consistent evidence adds up
    assert combine_pvalues([0.001, 0.999]) == pytest.approx(0.5, abs=1e-6)  # opposite evidence cancels
    assert combine_pvalues([None, float("nan")]) is None
    assert combine_pvalues([0.3]) == pytest.approx(0.3)


def test_spearman_permutation_p_is_exact_for_few_points():
    perfect = spearman_with_p([1, 2, 3, 4, 5], [0.1, 0.2, 0.3, 0.4, 0.5])
    assert perfect["rho"] == pytest.approx(1.0) and perfect["p_value"] == pytest.approx(1 / 120)
    reversed_ = spearman_with_p([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    assert reversed_["p_value"] == pytest.approx(1.0)
    assert spearman_with_p([1, 1, 1], [1, 2, 3])["rho"] is None


def _filter_section(
    geometry: list[tuple[int, int]], random: list[tuple[int, int]], base: list[tuple[int, int]]
):
    b = _hits(*base)
    section = {"dataset": "insecure_mixed", "fraction": 0.5, "unfiltered": rate_with_ci(b)}
    for name, counts in (("geometry", geometry), ("random", random)):
        section[name] = {**paired_bootstrap(_hits(*counts), b), "by_fraction": {}, "in_domain": 0.9}
    section["geometry_vs"] = geometry_vs_others(section)
    return section


def _summary(em_gap: bool, geometry_p: float, filter_wins: bool, dyn_rs: list[float]) -> dict:
    ind = _hits((12, 100), (15, 100), (10, 100)) if em_gap else _hits((3, 100), (2, 100), (4, 100))
    ctl = _hits((1, 100), (2, 100), (1, 100)) if em_gap else _hits((3, 100), (3, 100), (3, 100))
    geo_counts = [(2, 100)] * 3 if filter_wins else [(10, 100)] * 3
    filtering = _filter_section(geo_counts, [(10, 100)] * 3, [(12, 100)] * 3)
    em = {
        "insecure": rate_with_ci(ind),
        "secure": rate_with_ci(ctl),
        "edu_insecure": rate_with_ci(ctl),
        "x": rate_with_ci(ctl),
    }
    return {
        "em": em,
        "geometry": {
            "p_value": geometry_p,
            "per_layer_p": {"0": 0.5, "1": geometry_p},
            "mean_inducing": 0.2,
            "mean_control": 0.1,
            "layer": "layer_1",
            "n_organisms": 3,
            "spearman_vs_em": 0.9,
            "spearman_p_value": 0.04,
        },
        "filtering": filtering,
        "dynamics": {"per_organism_pearson_r": dyn_rs},
    }


def test_geometry_is_compared_with_every_other_filter_by_unit():
    section = _filter_section([(2, 100)] * 3, [(10, 100)] * 3, [(12, 100)] * 3)
    vs = section["geometry_vs"]
    assert set(vs) == {"random"}  # the unfiltered entry is not a filter
    assert vs["random"]["relative_reduction"] == pytest.approx(0.8)
    assert vs["random"]["relative_reduction_ci"][0] > 0


def test_every_claim_holds_when_the_numbers_support_it():
    found = {v["claim"].split(":")[0]: v for v in verdicts(_summary(True, 0.01, True, [0.9, 0.5, 0.7]))}
    assert found["EM"]["verdict"] == "held"
    assert {v["verdict"] for v in found.values()} == {"held"}
    assert "bad_medical" not in str(found)  # contrasts whose datasets were not run are not stated


def test_claims_that_fail_are_shown_as_not_held_never_dropped():
    out = verdicts(_summary(False, 0.4, False, [0.9, -0.2, 0.7]))
    assert len(out) == 6  # two EM contrasts, geometry, risk, filtering, dynamics
    by_claim = {v["claim"]: v["verdict"] for v in out}
    assert by_claim["EM: insecure > secure"] == "not held"
    assert (
        by_claim["geometry: inducing datasets' latents sit closer to toxic latents than controls'"]
        == "not held"
    )
    assert by_claim["filtering insecure_mixed: geometry beats random removal"] == "not held"
    assert by_claim["dynamics: toxic activation rises with EM over training"] == "not held"


def test_skipped_steps_are_not_measured():
    out = verdicts({"em": {}, "geometry": {}, "filtering": None, "dynamics": None})
    assert {v["verdict"] for v in out} == {"not measured"}


def test_an_organism_without_a_dynamics_correlation_counts_against_the_claim():
    def dyn(rs, exact=None):
        summary = {"em": {}, "geometry": {}, "filtering": None, "dynamics": {"per_organism_pearson_r": rs}}
        if exact is not None:
            summary["dynamics"]["per_organism_pearson_r_exact"] = exact
        (claim,) = [v for v in verdicts(summary) if v["claim"].startswith("dynamics")]
        return claim

    assert dyn([0.9, 0.5])["verdict"] == "held"
    flat = dyn([0.9, None])
    assert flat["verdict"] == "not held" and "n/a" in flat["measured"]
    exact = dyn([0.9, -0.2], exact=[0.8, 0.4])  # the exact readout decides; the sampled one is shown
    assert exact["verdict"] == "held" and "sampled EM +0.90, -0.20" in exact["measured"]
    assert dyn([None, None])["verdict"] == "not measured"
