"""Statistics pooled over organisms x fine-tuning seeds: paired EM contrasts, combined p-values, Spearman
with an exact permutation p, and geometry filtering against the other filters.

A *unit* is one fine-tune (an organism and a seed) with its 0/1 misaligned flags per evaluated answer.
Intervals come from the two-level bootstrap the filtering experiment uses (units resampled with
replacement, the same units for both arms of a paired comparison, then each unit's rate drawn from its
Jeffreys posterior), so organism-to-organism variation is part of every interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spillover.studies.filtering_stats import draw_mean_rate, paired_bootstrap, paired_exact

__all__ = [
    "combine_pvalues",
    "geometry_vs_others",
    "hits_from_entry",
    "paired_difference",
    "spearman_with_p",
]


def hits_from_entry(entry: Mapping[str, Any]) -> list[np.ndarray]:
    """Per-unit 0/1 flags rebuilt from a rate entry's ``per_seed`` rates and ``n_answers``.

    Every estimator downstream depends on a unit's flags only through their count and sum, so the
    rebuilt arrays give the same intervals as the originals.
    """
    out = []
    for rate, n in zip(entry["per_seed"], entry["n_answers"], strict=True):
        k = 0 if rate is None or rate != rate else round(float(rate) * int(n))
        out.append(np.r_[np.ones(k), np.zeros(int(n) - k)])
    return out


def paired_difference(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], *, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Mean rate of ``a`` minus that of ``b`` over paired units, and their ratio, with 95% intervals."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same non-zero number of units, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    diff, ratio = np.empty(n_boot), np.empty(n_boot)
    for i in range(n_boot):
        pick = rng.integers(0, len(a), size=len(a))
        ra, rb = draw_mean_rate(a, pick, rng), draw_mean_rate(b, pick, rng)
        diff[i], ratio[i] = ra - rb, ra / rb if rb > 0 else np.inf
    mean_a = float(np.mean([h.mean() for h in a if h.size]))
    mean_b = float(np.mean([h.mean() for h in b if h.size]))
    return {
        "a": mean_a,
        "b": mean_b,
        "difference": mean_a - mean_b,
        "difference_ci": [float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975))],
        "ratio": mean_a / mean_b if mean_b > 0 else None,
        "ratio_ci": [float(np.quantile(ratio, 0.025)), float(np.quantile(ratio, 0.975))],
        "n_units": len(a),
    }


def combine_pvalues(p_values: Sequence[float | None]) -> float | None:
    """Stouffer's combination of independent one-sided p-values (one per organism).

    Unlike Fisher's method, which a single strong organism can carry, Stouffer's sums the z-scores, so
    organisms that point the other way count against the claim.
    """
    from scipy.stats import norm

    clean = [min(max(float(p), 1e-9), 1 - 1e-9) for p in p_values if p is not None and p == p]
    if not clean:
        return None
    z = norm.isf(np.array(clean))
    return float(norm.sf(z.sum() / np.sqrt(len(z))))


def spearman_with_p(
    x: Sequence[float], y: Sequence[float], *, n_perm: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Spearman's rho and its one-sided permutation p-value (rho > 0); exact for up to 7 points."""
    from itertools import permutations

    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    if len(rx) < 3 or np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return {"rho": None, "p_value": None, "n": len(rx)}
    rho = float(np.corrcoef(rx, ry)[0, 1])
    if len(ry) <= 7:
        null = np.array([np.corrcoef(rx, np.array(p))[0, 1] for p in permutations(ry)])
    else:
        rng = np.random.default_rng(seed)
        null = np.array([np.corrcoef(rx, rng.permutation(ry))[0, 1] for _ in range(n_perm)])
    return {"rho": rho, "p_value": float(np.mean(null >= rho - 1e-12)), "n": len(rx)}


def geometry_vs_others(section: Mapping[str, Any]) -> dict[str, Any]:
    """Geometry filtering against each other filter of a filtering section, paired by unit.

    ``relative_reduction`` is 1 - EM(geometry) / EM(other) with its paired bootstrap interval: above 0,
    geometry left less EM than the other filter on the same units. Where both entries carry the exact
    EM probability per unit, ``exact`` is :func:`~spillover.studies.filtering_stats.paired_exact` of
    geometry against the other filter (``difference`` < 0: geometry left less).
    """
    if not isinstance(section.get("geometry"), Mapping):
        return {}
    g = section["geometry"]
    geo = hits_from_entry(g)
    out = {}
    for m, e in section.items():
        if m == "geometry" or not isinstance(e, Mapping) or "by_fraction" not in e:
            continue
        out[m] = paired_bootstrap(geo, hits_from_entry(e))
        if g.get("em_probability_per_unit") and e.get("em_probability_per_unit"):
            out[m]["exact"] = paired_exact(g["em_probability_per_unit"], e["em_probability_per_unit"])
    return out
