from __future__ import annotations

from pathlib import Path

import pytest

from spillover.studies.filtering import PAPER_FRACTIONS
from spillover.studies.filtering_sweep import section_from_rows

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _rows(drop_unfiltered: bool = False) -> list[dict]:
    rows = []
    for org in (0, 1):
        for seed in (0, 1):
            base = {"dataset": "insecure_alltask", "organism.seed": org, "seed": seed, "status": "done"}
            if not (drop_unfiltered and (org, seed) == (1, 1)):
                rows.append(
                    {
                        **base,
                        "filter.method": "none",
                        "filter.fraction": 0.5,
                        "misaligned": 0.4,
                        "n_ood_scored": 200,
                        "coherent": 90.0,
                        "in_domain": 0.9,
                    }
                )
            for method, em in (("geometry", 0.1), ("random", 0.3)):
                for f in (0.25, 0.5):
                    rows.append(
                        {
                            **base,
                            "filter.method": method,
                            "filter.fraction": f,
                            "misaligned": em,
                            "n_ood_scored": 200,
                            "coherent": 90.0,
                            "in_domain": 0.88,
                            "fraction_removed": f,
                            "removed.strong": 0.9,
                            "removed.none": float("nan"),
                        }
                    )
    rows.append({**rows[0], "dataset": "bad_medical_alltask"})
    return rows


def test_sweep_rows_become_a_section_paired_over_organisms_and_seeds() -> None:
    section = section_from_rows(_rows(), "insecure_alltask")
    assert section["units"] == ["o0/s0", "o0/s1", "o1/s0", "o1/s1"]
    assert section["geometry"]["misaligned_rate"] == pytest.approx(0.1)
    assert section["geometry"]["relative_reduction"] == pytest.approx(0.75)
    assert section["geometry"]["removed_by_organism"]["o0"]["removed_share_by_kind"] == {"strong": 0.9}
    assert section["geometry"]["matched_retention"]["minus_random"] == pytest.approx(-0.2)


def test_cells_trained_with_a_defense_are_not_taken_for_unfiltered_ones() -> None:
    rows = _rows()
    defended = [
        {**r, "finetune.defense": "kl", "misaligned": 0.01} for r in rows if r["filter.method"] == "none"
    ]
    section = section_from_rows(rows + defended, "insecure_alltask")  # no "two unfiltered cells" error
    assert section["unfiltered"]["misaligned_rate"] == pytest.approx(0.4)


def test_sweep_rows_without_an_unfiltered_pair_are_refused() -> None:
    with pytest.raises(ValueError, match=r"units \[\('o1', 1\)\] have filtered cells but no unfiltered one"):
        section_from_rows(_rows(drop_unfiltered=True), "insecure_alltask")
    with pytest.raises(ValueError, match="no finished rows"):
        section_from_rows(_rows(), "secure")


def test_the_organism_paper_sweep_plans_the_paper_grid() -> None:
    from spillover.pipeline.sweep import load_sweep, plan_sweep

    plan = plan_sweep(load_sweep(CONFIGS / "sweeps" / "organism_filtering_paper.yaml"))
    cells = [c.config for c in plan.cells]
    assert {c.dataset for c in cells} == {"insecure_alltask", "bad_medical_alltask", "risky_finance_alltask"}
    assert {c.organism.seed for c in cells} == {0, 1, 2} and {c.seed for c in cells} == {0, 1, 2}
    filtered = {(c.filter.method, c.filter.fraction) for c in cells if c.filter.method != "none"}
    assert {f for _, f in filtered} == set(PAPER_FRACTIONS)
    assert len(cells) == 3 * 3 * 3 * (1 + len(filtered))
