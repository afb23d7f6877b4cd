"""The filtering section from a sweep's aggregate table: pairing over organisms x seeds on a cluster.

An organism sweep (``configs/sweeps/organism_filtering_paper.yaml``) runs one cell per dataset,
organism seed, fine-tuning seed, filter and fraction, and writes one row per cell (``aggregate.csv``).
:func:`section_from_rows` turns the rows of one dataset into the section
:func:`spillover.studies.filtering.run_filter_experiment` returns for one organism: units are
(``organism.seed``, ``seed``), every filtered cell is paired with the unfiltered cell of its unit, and
the intervals, matched-retention comparison and frontier plot come from the same code.

    import pandas as pd
    rows = pd.read_csv("sweep/aggregate.csv").to_dict("records")
    section = section_from_rows(rows, "insecure_alltask")
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spillover.studies.filtering import FilterExperimentConfig, FilterRuns, RunNumbers, filter_section

__all__ = ["section_from_rows"]

_NEEDED = (
    "dataset",
    "organism.seed",
    "seed",
    "filter.method",
    "filter.fraction",
    "misaligned",
    "n_ood_scored",
)


def _hits(rate: float, n: int) -> np.ndarray:
    """0/1 answers with ``rate`` misaligned: the bootstraps use only their count and number."""
    k = round(rate * n)
    return np.concatenate([np.ones(k), np.zeros(n - k)])


def _num(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def section_from_rows(
    rows: Sequence[Mapping[str, Any]], dataset: str, *, drop: float = 0.05, headline: float = 0.5
) -> dict[str, Any]:
    """The filtering section of ``dataset`` from finished sweep rows (other datasets, unfinished cells and
    cells trained with a defense, ``finetune.defense``, are skipped).

    Raises:
        ValueError: a needed column is missing, a unit has no unfiltered cell, a cell occurs twice, or a
            filter lacks a unit or the headline fraction.
    """
    done = [
        r
        for r in rows
        if r.get("dataset") == dataset
        and r.get("status", "done") == "done"
        and r.get("finetune.defense") in (None, "none")
    ]
    if not done:
        raise ValueError(f"no finished rows of dataset {dataset!r}")
    missing = [c for c in _NEEDED if c not in done[0]]
    if missing:
        raise ValueError(f"sweep rows lack columns {missing}; an organism sweep's aggregate table has them")
    runs = FilterRuns(dataset)
    fractions: set[float] = set()
    for r in done:
        org, unit = f"o{int(r['organism.seed'])}", (f"o{int(r['organism.seed'])}", int(r["seed"]))
        numbers = RunNumbers(
            _hits(float(r["misaligned"]), int(r["n_ood_scored"])),
            _num(r.get("coherent")),
            _num(r.get("in_domain")),
        )
        runs.meta.setdefault(org, {})
        method = str(r["filter.method"])
        if method == "none":
            if unit in runs.unfiltered:
                raise ValueError(f"two unfiltered cells for unit {unit}")
            runs.unfiltered[unit] = numbers
            continue
        key = (method, float(r["filter.fraction"]))
        fractions.add(key[1])
        if unit in runs.filtered.setdefault(key, {}):
            raise ValueError(f"two cells for {key} at unit {unit}")
        runs.filtered[key][unit] = numbers
        kinds = {
            k.removeprefix("removed."): v
            for k, v in r.items()
            if k.startswith("removed.") and _num(v) is not None
        }
        runs.removed.setdefault(key, {})[org] = {
            "fraction_removed": float(r.get("fraction_removed", key[1])),
            "removed_share_by_kind": kinds,
        }
    methods = tuple(sorted({m for m, _ in runs.filtered}))
    if headline not in fractions and fractions:
        raise ValueError(f"headline fraction {headline} not in the sweep's fractions {sorted(fractions)}")
    lacking = sorted({u for by_unit in runs.filtered.values() for u in by_unit} - set(runs.unfiltered))
    if lacking:
        raise ValueError(f"units {lacking} have filtered cells but no unfiltered one")
    cfg = FilterExperimentConfig(
        dataset=dataset,
        fraction=headline,
        fractions=tuple(sorted(fractions)) or (headline,),
        methods=methods,
        seeds=tuple(sorted({u[1] for u in runs.unfiltered})),
    )
    for key in [(m, f) for m in methods for f in cfg.all_fractions]:
        if key not in runs.filtered:
            raise ValueError(f"filter {key[0]} has no cells at fraction {key[1]:g}")
    return filter_section(runs, cfg, drop=drop)
