"""The study's statistics: latent-set selection, decoder-cosine contrasts, mean differences, paired tests.

The contrasts themselves (which corpora, which sets, and why each is clean) are defined in
``spillover.realmodel.contrasts``; this module computes them from per-corpus statistics with spillover's
geometry functions (``select_features``, ``feature_geometry``, ``random_set_null``, ``permutation_test``,
``mann_whitney``, ``sign_flip_test``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from spillover.geometry.features import Aggregate, FeatureSet, FeatureStats, select_features
from spillover.geometry.similarity import cosine, feature_geometry
from spillover.geometry.stats import mann_whitney, permutation_test, random_set_null, sign_flip_test
from spillover.realmodel.contrasts import (
    PAIRED_GROUPS,
    DirectionSpec,
    GeometryContrast,
    LatentSetSpec,
    MeanDiffContrast,
)

__all__ = [
    "direction_vectors",
    "geometry_contrasts",
    "holm",
    "latent_sets",
    "mean_diff_contrasts",
    "paired_medical_tests",
]


# -- latent geometry ----------------------------------------------------------------------------------


def _pooled(stats: Mapping[str, FeatureStats], names: Sequence[str]) -> FeatureStats:
    return stats[names[0]] if len(names) == 1 else FeatureStats.pooled([stats[n] for n in names])


def latent_sets(
    stats: Mapping[str, FeatureStats],
    specs: Mapping[str, LatentSetSpec],
    *,
    k: int,
    toxic_k: int,
    aggregate: Aggregate = "mean",
) -> dict[str, FeatureSet]:
    """Select every latent set: top-k of ``score(positive) - score(negative)`` (positive scores only)."""
    return {
        name: select_features(
            _pooled(stats, spec.positive),
            _pooled(stats, spec.negative),
            k=toxic_k if spec.role == "toxic" else k,
            aggregate=aggregate,
            selection="contrast",
        )
        for name, spec in specs.items()
    }


def geometry_contrasts(
    decoder_FD: torch.Tensor,
    sets: Mapping[str, FeatureSet],
    contrasts: Mapping[str, GeometryContrast],
    pool: torch.Tensor,
    *,
    threshold: float = 0.3,
    n_null: int = 1000,
    n_permutations: int = 5000,
    seed: int = 0,
) -> dict[str, Any]:
    """Nearest-toxic decoder cosines of inducing vs control latent sets, per contrast.

    Args:
        decoder_FD: the SAE's unit decoder rows ``(d_sae, d_in)``.
        sets: the selected latent sets by name.
        contrasts: what to compare.
        pool: latents the random-set null draws from (those alive on the study's data).
        threshold: cosine counted as close.
        n_null: random latent sets per null.
        n_permutations: relabellings per permutation test.
        seed: seeds nulls and permutations.

    Returns:
        Per contrast: each set's geometry summary and null, and the inducing-vs-control tests
        (one-sided: inducing closer).
    """
    out: dict[str, Any] = {}
    for c_i, (name, c) in enumerate(contrasts.items()):
        tox = sets[c.toxic]
        per_set: dict[str, Any] = {}
        values: dict[str, list[float]] = {}
        for j, set_name in enumerate((*c.inducing, *c.control)):
            geo = feature_geometry(decoder_FD, sets[set_name], tox, threshold=threshold)
            null = random_set_null(
                decoder_FD,
                tox.indices,
                geo.n_dataset,
                observed_mean_max=geo.mean_max,
                observed_mean=geo.mean,
                pool=pool,
                n_draws=n_null,
                seed=seed + 97 * c_i + j,
            )
            summary = geo.as_dict()
            summary.pop("hist")
            summary.pop("nearest")
            per_set[set_name] = {"geometry": summary, "null": {m: r.as_dict() for m, r in null.items()}}
            values[set_name] = geo.max_cos
        a = [v for s in c.inducing for v in values[s]]
        b = [v for s in c.control for v in values[s]]
        # The random-set null's mean does not depend on the set size, so it is one number per contrast.
        null_mean = per_set[c.inducing[0]]["null"]["mean_max"]["null_mean"]
        mean_a = float(np.mean(a)) if a else math.nan
        mean_b = float(np.mean(b)) if b else math.nan
        out[name] = {
            "toxic": c.toxic,
            "n_toxic": int(tox.indices.numel()),
            "inducing": list(c.inducing),
            "control": list(c.control),
            "sets": per_set,
            "mean_max_inducing": mean_a,
            "mean_max_control": mean_b,
            "difference": mean_a - mean_b,
            "null_mean_max": null_mean,
            "null_p": {name: per_set[name]["null"]["mean_max"]["p_value"] for name in per_set},
            "permutation": permutation_test(a, b, n_permutations=n_permutations, seed=seed + c_i).as_dict(),
            "mann_whitney": mann_whitney(a, b).as_dict(),
        }
    return out


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (NaN entries are left NaN and not counted)."""
    items = sorted(((p, k) for k, p in p_values.items() if not math.isnan(p)))
    m = len(items)
    adjusted: dict[str, float] = {k: math.nan for k in p_values}
    running = 0.0
    for i, (p, k) in enumerate(items):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[k] = running
    return adjusted


# -- mean differences ---------------------------------------------------------------------------------


def _group_of(corpus: str) -> str:
    for group, members in PAIRED_GROUPS.items():
        if corpus in members:
            return group
    return corpus


def _weighted_means(
    means: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    out = {}
    for name, x in means.items():
        w = weights[_group_of(name)].double()
        valid = ~torch.isnan(x).any(dim=1)
        w = w * valid
        out[name] = (w @ torch.nan_to_num(x.double())) / w.sum().clamp(min=1e-12)
    return out


def _directions(
    corpus_means: Mapping[str, torch.Tensor], specs: Mapping[str, DirectionSpec], sizes: Mapping[str, int]
) -> dict[str, torch.Tensor]:
    def side(names: Sequence[str]) -> torch.Tensor:
        total = sum(sizes[n] for n in names)
        return sum(
            (corpus_means[n] * sizes[n] / total for n in names), torch.zeros_like(corpus_means[names[0]])
        )

    return {name: side(d.positive) - side(d.negative) for name, d in specs.items()}


def direction_vectors(
    means: Mapping[str, torch.Tensor], specs: Mapping[str, DirectionSpec]
) -> dict[str, torch.Tensor]:
    """Each direction from per-sample means (corpus -> ``(n, d)``): sample-weighted positive minus negative."""
    valid = {n: ~torch.isnan(x).any(dim=1) for n, x in means.items()}
    sizes = {n: int(v.sum()) for n, v in valid.items()}
    corpus_means = {n: x[valid[n]].double().sum(0) / max(sizes[n], 1) for n, x in means.items()}
    return {k: v.float() for k, v in _directions(corpus_means, specs, sizes).items()}


def _interval(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def mean_diff_contrasts(
    means: Mapping[str, torch.Tensor],
    specs: Mapping[str, DirectionSpec],
    contrasts: Mapping[str, MeanDiffContrast],
    extra: Sequence[tuple[str, str]],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Direction cosines with bootstrap 95% intervals (samples resampled, paired corpora together).

    Args:
        means: corpus -> ``(n, d)`` per-sample mean answer activations.
        specs: directions (differences of corpus means).
        contrasts: cos(inducing shift, toxic) vs cos(control shift, toxic).
        extra: further direction pairs whose cosine is reported.
        n_bootstrap: bootstrap replicates.
        seed: seeds the resampling.

    Returns:
        ``{"contrasts": {...}, "cosines": {"a|b": {...}}}``; each value has ``point``, ``ci95`` and, for
        differences, ``boot_frac_le_0`` (share of replicates at or below zero: a rough one-sided p-value).
    """
    sizes = {n: int((~torch.isnan(x).any(dim=1)).sum()) for n, x in means.items()}
    groups: dict[str, int] = {}
    for name, x in means.items():
        groups.setdefault(_group_of(name), x.shape[0])
    for name, x in means.items():
        if groups[_group_of(name)] != x.shape[0]:
            raise ValueError(
                f"paired corpus {name} has {x.shape[0]} samples, its partner {groups[_group_of(name)]}"
            )

    def stats_for(weights: Mapping[str, torch.Tensor]) -> dict[str, float]:
        dirs = _directions(_weighted_means(means, weights), specs, sizes)
        row: dict[str, float] = {}
        for name, c in contrasts.items():
            ci = cosine(dirs[c.inducing], dirs[c.toxic])
            cc = cosine(dirs[c.control], dirs[c.toxic])
            row[f"{name}:inducing"] = ci
            row[f"{name}:control"] = cc
            row[f"{name}:difference"] = ci - cc
        for a, b in extra:
            row[f"{a}|{b}"] = cosine(dirs[a], dirs[b])
        return row

    point = stats_for({g: torch.ones(n) for g, n in groups.items()})
    gen = torch.Generator().manual_seed(seed)
    reps: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_bootstrap):
        weights = {
            g: torch.bincount(torch.randint(0, n, (n,), generator=gen), minlength=n).float()
            for g, n in groups.items()
        }
        for k, v in stats_for(weights).items():
            reps[k].append(v)
    arr = {k: np.asarray(v) for k, v in reps.items()}

    def entry(key: str, diff: bool = False) -> dict[str, Any]:
        e: dict[str, Any] = {"point": point[key], "ci95": _interval(arr[key])}
        if diff:
            e["boot_frac_le_0"] = float((arr[key] <= 0).mean())
        return e

    return {
        "contrasts": {
            name: {
                "toxic": c.toxic,
                "inducing": c.inducing,
                "control": c.control,
                "cos_inducing": entry(f"{name}:inducing"),
                "cos_control": entry(f"{name}:control"),
                "difference": entry(f"{name}:difference", diff=True),
            }
            for name, c in contrasts.items()
        },
        "cosines": {f"{a}|{b}": entry(f"{a}|{b}") for a, b in extra},
        "n_bootstrap": n_bootstrap,
        "norms": {
            name: float(v.norm())
            for name, v in _directions(
                _weighted_means(means, {g: torch.ones(n) for g, n in groups.items()}), specs, sizes
            ).items()
        },
    }


# -- paired per-prompt tests (medical) ----------------------------------------------------------------


def paired_medical_tests(
    codes_bad: torch.Tensor,
    codes_good: torch.Tensor,
    resid_bad: torch.Tensor,
    resid_good: torch.Tensor,
    sets: Mapping[str, FeatureSet],
    directions: Mapping[str, torch.Tensor],
    toxic_names: Sequence[str],
    pool: torch.Tensor,
    *,
    n_random: int = 200,
    n_permutations: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per prompt, bad minus good answer on finance-derived toxic latents and directions.

    Args:
        codes_bad: ``(n, d_sae)`` token-mean latent activations of the bad answers.
        codes_good: the same for the good answers to the same prompts (row i = prompt i).
        resid_bad: ``(n, d)`` mean residual activations of the bad answers.
        resid_good: the same for the good answers.
        sets: latent sets by name (the toxic ones are looked up by ``toxic_names``).
        directions: unit or raw directions by name (normalised here).
        toxic_names: which toxic sets / directions to test.
        pool: latents random sets are drawn from (alive latents).
        n_random: random latent sets for the activation null.
        n_permutations: Monte Carlo sign flips.
        seed: seeds the null and the flips.

    Returns:
        Per toxic name: the latent activation test (mean paired difference, its relative size, sign-flip
        p-value, and the share of random same-size latent sets with at least that difference) and the
        projection test (mean paired difference of projections on the unit direction, sign-flip p).
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {}
    for t_i, name in enumerate(toxic_names):
        idx = sets[name].indices
        entry: dict[str, Any] = {"n_pairs": int(codes_bad.shape[0])}
        if idx.numel():
            diff = (codes_bad[:, idx].sum(1) - codes_good[:, idx].sum(1)).double()
            observed = float(diff.mean())
            candidates = pool[~torch.isin(pool, idx)]
            null = []
            if len(candidates) >= idx.numel():
                all_diff = (codes_bad - codes_good).double()
                for _ in range(n_random):
                    pick = candidates[torch.randperm(len(candidates), generator=gen)[: idx.numel()]]
                    null.append(float(all_diff[:, pick].sum(1).mean()))
            null_arr = np.asarray(null)
            entry["latent_activation"] = {
                "n_latents": int(idx.numel()),
                "mean_bad": float(codes_bad[:, idx].sum(1).mean()),
                "mean_good": float(codes_good[:, idx].sum(1).mean()),
                "mean_difference": observed,
                "sign_flip": sign_flip_test(
                    diff.tolist(), n_permutations=n_permutations, seed=seed + t_i
                ).as_dict(),
                "random_sets_mean_difference": float(null_arr.mean()) if null else math.nan,
                "random_sets_sd": float(null_arr.std()) if null else math.nan,
                "p_vs_random_sets": float((1 + (null_arr >= observed).sum()) / (1 + len(null)))
                if null
                else math.nan,
            }
        if name in directions:
            unit = directions[name].double() / directions[name].double().norm().clamp(min=1e-12)
            proj = ((resid_bad.double() - resid_good.double()) @ unit).nan_to_num()
            gap = (resid_bad.double() - resid_good.double()).norm(dim=1).nan_to_num()
            entry["projection"] = {
                "mean_difference": float(proj.mean()),
                "mean_norm_of_difference": float(gap.mean()),
                "sign_flip": sign_flip_test(
                    proj.tolist(), n_permutations=n_permutations, seed=seed + t_i
                ).as_dict(),
            }
        out[name] = entry
    return out
