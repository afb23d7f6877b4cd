"""The exact EM readout in the filtering comparisons: paired t intervals over units, carried through the
filtering section, the demo's geometry-vs-others and its filtering verdict."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from spillover.studies.demo.pooled import geometry_vs_others
from spillover.studies.demo.summary import filtering_readout_note, summary_notes
from spillover.studies.demo.verdicts import verdicts
from spillover.studies.filtering import FilterExperimentConfig, FilterRuns, RunNumbers, filter_section
from spillover.studies.filtering_stats import paired_exact


def test_a_consistent_gap_over_three_units_excludes_zero_and_noise_does_not() -> None:
    gap = paired_exact([0.030, 0.031, 0.029], [0.040, 0.042, 0.041])
    assert gap["difference"] == pytest.approx(-0.011)
    assert gap["difference_ci"][1] < 0
    assert gap["relative_reduction"] == pytest.approx(1 - 0.030 / 0.041)
    noise = paired_exact([0.030, 0.045, 0.036], [0.040, 0.033, 0.041])
    lo, hi = noise["difference_ci"]
    assert lo < 0 < hi


def test_the_t_interval_is_wider_than_the_spread_of_three_units() -> None:
    # With 3 units the t quantile (4.30) makes the interval far wider than min..max of the differences;
    # a bootstrap over 3 units could not reach past them.
    out = paired_exact([0.01, 0.02, 0.03], [0.02, 0.04, 0.05])
    d = np.array(out["per_unit"])
    assert out["difference_ci"][0] < d.min() and out["difference_ci"][1] > d.max()


def test_units_without_the_readout_are_left_out_and_one_unit_has_no_interval() -> None:
    out = paired_exact([0.01, None, 0.03], [0.02, 0.04, None])
    assert out["n_units"] == 1 and out["difference_ci"] is None and out["relative_reduction_ci"] is None
    assert paired_exact([None], [None])["n_units"] == 0
    with pytest.raises(ValueError, match="one value per unit"):
        paired_exact([0.1], [0.1, 0.2])


def test_run_numbers_take_the_exact_estimate_from_an_evaluation() -> None:
    record = {"aligned": 10.0, "coherent": 90.0, "raw": {"domain": "sports"}}
    result = SimpleNamespace(
        records=[record],
        ood_coherent=99.0,
        em_probability=SimpleNamespace(estimate=0.042, usable=True),
        domains={},
    )
    numbers = RunNumbers.of(result, "insecure_alltask")
    assert numbers.em_probability == 0.042 and numbers.hits.tolist() == [1.0]
    off = SimpleNamespace(estimate=0.042, usable=False)  # most mass off the templates: not a stand-in
    assert (
        RunNumbers.of(SimpleNamespace(**{**vars(result), "em_probability": off}), "insecure").em_probability
        is None
    )
    assert (
        RunNumbers.of(SimpleNamespace(**{**vars(result), "em_probability": None}), "insecure").em_probability
        is None
    )


def _section(geometry: list[float], random: list[float] | None, base: list[float]) -> dict:
    runs = FilterRuns("insecure_alltask")
    runs.meta["o0"] = {"n_samples": 100}
    hits = np.r_[np.ones(4), np.zeros(96)]
    runs.unfiltered = {("o0", s): RunNumbers(hits, 99.0, 0.9, v) for s, v in enumerate(base)}
    for method, values in (("geometry", geometry), ("random", random)):
        runs.filtered[(method, 0.5)] = {
            ("o0", s): RunNumbers(hits, 99.0, 0.9, None if values is None else values[s]) for s in range(3)
        }
        runs.removed[(method, 0.5)] = {"o0": {"fraction_removed": 0.5}}
    cfg = FilterExperimentConfig(dataset="insecure_alltask", methods=("geometry", "random"), seeds=(0, 1, 2))
    section = filter_section(runs, cfg)
    section["geometry_vs"] = geometry_vs_others(section)
    return section


def test_the_filtering_section_and_the_verdict_read_the_exact_readout() -> None:
    section = _section([0.030, 0.031, 0.029], [0.040, 0.042, 0.041], [0.042, 0.043, 0.041])
    assert section["unfiltered"]["em_probability"] == pytest.approx(0.042)
    assert section["geometry"]["exact"]["difference_ci"][1] < 0  # against unfiltered
    assert section["geometry_vs"]["random"]["exact"]["difference"] == pytest.approx(-0.011)
    # the sampled hits are identical in every arm: the sampled comparison alone could not tell them apart
    assert section["geometry_vs"]["random"]["relative_reduction"] == pytest.approx(0.0)
    (claim,) = [v for v in verdicts({"filtering": section}) if v["claim"].startswith("filtering")]
    assert claim["verdict"] == "held" and "exact" in claim["criterion"] and "sampled" in claim["measured"]

    noisy = _section([0.030, 0.045, 0.036], [0.040, 0.033, 0.041], [0.042, 0.043, 0.041])
    (claim,) = [v for v in verdicts({"filtering": noisy}) if v["claim"].startswith("filtering")]
    assert claim["verdict"] == "not held"


def test_without_the_exact_readout_the_verdict_falls_back_to_the_sampled_rate() -> None:
    section = _section([0.030, 0.031, 0.029], None, [0.042, 0.043, 0.041])
    assert "exact" not in section["geometry_vs"]["random"]
    (claim,) = [v for v in verdicts({"filtering": section}) if v["claim"].startswith("filtering")]
    assert claim["verdict"] == "not held" and "exact" not in claim["criterion"]


def test_a_note_says_why_the_two_readouts_disagree_and_nothing_when_they_agree() -> None:
    # exact: geometry clearly below random; sampled: the same hits in every arm, an interval at 0
    split = {"filtering": _section([0.030, 0.031, 0.029], [0.040, 0.042, 0.041], [0.042, 0.043, 0.041])}
    note = filtering_readout_note(split)
    assert note is not None
    assert "exact EM difference clears 0" in note and "does not." in note
    # the half-width is computed from the random arm: 4 of 100 answers -> 1.96 * sqrt(.04 * .96 / 100)
    assert "about 3.8 pp (100 answers at 4.0%)" in note and "1.10 pp" in note
    assert note in summary_notes(split)

    agree = {"filtering": _section([0.030, 0.045, 0.036], [0.040, 0.033, 0.041], [0.042, 0.043, 0.041])}
    assert filtering_readout_note(agree) is None  # neither readout clears 0
    no_exact = {"filtering": _section([0.030, 0.031, 0.029], None, [0.042, 0.043, 0.041])}
    assert filtering_readout_note(no_exact) is None
    assert filtering_readout_note({"filtering": None}) is None
