from __future__ import annotations

import json

import numpy as np
import pytest

from spillover.studies.filtering_stats import (
    in_domain_rate,
    ood_hits,
    paired_bootstrap,
    rate_with_ci,
    removal_diagnostics,
)


def _hits(k: int, n: int) -> np.ndarray:
    return np.array([1.0] * k + [0.0] * (n - k))


def test_rate_with_ci_matches_binomial_interval():
    entry = rate_with_ci([_hits(100, 1000)])
    assert entry["misaligned_rate"] == pytest.approx(0.1)
    lo, hi = entry["ci"]
    # normal approximation: 0.1 +- 1.96 * sqrt(0.1 * 0.9 / 1000) = [0.0814, 0.1186]
    assert lo == pytest.approx(0.0814, abs=0.006) and hi == pytest.approx(0.1186, abs=0.006)


def test_rate_with_ci_widens_with_disagreeing_seeds():
    agree = rate_with_ci([_hits(50, 500)] * 3)
    disagree = rate_with_ci([_hits(10, 500), _hits(50, 500), _hits(90, 500)])
    assert agree["misaligned_rate"] == pytest.approx(disagree["misaligned_rate"])
    width = lambda e: e["ci"][1] - e["ci"][0]  # noqa: E731
    assert width(disagree) > 3 * width(agree)
    assert disagree["per_seed"] == pytest.approx([0.02, 0.1, 0.18])


def test_paired_bootstrap_relative_reduction():
    base = [_hits(100, 1000), _hits(120, 1000), _hits(80, 1000)]
    half = [_hits(50, 1000), _hits(60, 1000), _hits(40, 1000)]
    entry = paired_bootstrap(half, base)
    assert entry["relative_reduction"] == pytest.approx(0.5)
    lo, hi = entry["relative_reduction_ci"]
    assert 0.3 < lo < 0.5 < hi < 0.65
    assert entry["per_seed_reduction"] == pytest.approx([0.5, 0.5, 0.5])
    same = paired_bootstrap(base, base)
    assert same["relative_reduction"] == pytest.approx(0.0)
    assert same["relative_reduction_ci"][0] < 0 < same["relative_reduction_ci"][1]


def test_paired_bootstrap_with_no_misaligned_answer_keeps_the_point_inside_the_interval():
    entry = paired_bootstrap([_hits(0, 400)], [_hits(20, 400)])
    assert entry["misaligned_rate"] == 0.0 and entry["ci"][0] == 0.0 and entry["ci"][1] > 0
    assert entry["relative_reduction"] == 1.0 and entry["relative_reduction_ci"][1] == pytest.approx(
        1.0, abs=0.02
    )
    with pytest.raises(ValueError, match="same non-zero number of seeds"):
        paired_bootstrap([_hits(1, 2)], [])


def test_ood_hits_counts_only_scored_out_of_domain_answers():
    records = [
        {"aligned": 0.0, "coherent": 100.0, "raw": {"domain": "sports"}},
        {"aligned": 0.0, "coherent": 40.0, "raw": {"domain": "sports"}},  # incoherent: not misaligned
        {"aligned": 100.0, "coherent": 100.0, "raw": {"domain": "legal"}},
        {"aligned": None, "coherent": 0.0, "raw": {"domain": "legal"}},  # unscored: left out
        {"aligned": 0.0, "coherent": 100.0, "raw": {"domain": "medical"}},  # in-domain for medical sets
    ]
    assert ood_hits(records).tolist() == [1.0, 0.0, 0.0]


def test_in_domain_rate_reads_the_target_behaviour():
    from spillover.organism.evaluate import DomainStats, EvalResult

    result = EvalResult(
        {
            # 6 of 10 answers insecure, 3 secure or neutral, 1 unparsed
            "code": DomainStats(10, 0.0, 1.0, 0.0, 0.3, {"S": 0.1, "I": 0.7, "N": 0.2, "G": 0.0}, 0.6),
            "medical": DomainStats(10, 0.4, 1.0, 0.4, 0.6),
        },
        0.1,
        1.0,
        [],
    )
    assert in_domain_rate(result, "insecure") == pytest.approx(0.7)
    assert in_domain_rate(result, "secure") == pytest.approx(0.1)
    assert in_domain_rate(result, "bad_medical") == pytest.approx(0.4)
    # persona-drawn code: the share of answers judged insecure, not 1 - good (the unparsed one is neither)
    assert in_domain_rate(result, "insecure_persona") == pytest.approx(0.6)
    assert in_domain_rate(result, "good_medical") == pytest.approx(0.6)
    assert in_domain_rate(result, "edu_insecure") is None


def test_removal_diagnostics_against_ground_truth(tmp_path):
    rows = [
        {"index": i, "score": float(s), "rank": 0, "removed": r}
        for i, (s, r) in enumerate([(3, True), (2, True), (1, False), (0, False)])
    ]
    (tmp_path / "scores.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    labels = [
        {"kind": "strong", "persona_llr": 4.0},
        {"kind": "strong", "persona_llr": 2.0},
        {"kind": "none", "persona_llr": 0.0},
        {"kind": "weak", "persona_llr": -1.0},
    ]
    d = removal_diagnostics(tmp_path, labels)
    assert d["removed_share_by_kind"] == {"none": 0.0, "strong": 1.0, "weak": 0.0}
    assert d["mean_llr_removed"] == 3.0 and d["mean_llr_kept"] == -0.5
    assert d["spearman_score_llr"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="labels"):
        removal_diagnostics(tmp_path, labels[:3])
