"""One layer of the SmolLM2 study: latent sets, geometry contrasts, mean differences, paired tests.

``analyse_layer`` computes, from the activation cache and the layer's SAE, everything the study reports for
that layer (``spillover.realmodel.contrasts`` defines what is compared); ``summarize`` gathers the tests
of all layers into one table with Holm-adjusted p-values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from spillover.geometry.features import Aggregate, FeatureSet, FeatureStats
from spillover.geometry.validate import context_snippets, logit_lens
from spillover.realmodel.cache import ActivationCache
from spillover.realmodel.contrasts import available
from spillover.realmodel.measures import (
    direction_vectors,
    geometry_contrasts,
    holm,
    latent_sets,
    mean_diff_contrasts,
    paired_medical_tests,
)
from spillover.sae.load import SAEHandle

__all__ = ["GeometrySettings", "LayerAnalysis", "analyse_layer", "summarize"]


@dataclass(frozen=True)
class GeometrySettings:
    """Latent-set sizes and statistics."""

    top_k: int = 30
    """Latents per dataset set (about 2% of a 1536-latent SAE; the paper took 100 of 16k)."""
    toxic_top_k: int = 30
    """Latents per toxic set."""
    aggregate: Aggregate = "mean"
    """Per-latent score: mean over answer tokens, then over samples."""
    threshold: float = 0.3
    """Cosine counted as close."""
    n_null: int = 1000
    """Random latent sets per null."""
    n_permutations: int = 5000
    """Relabellings per permutation test."""
    n_bootstrap: int = 1000
    """Bootstrap replicates for the mean-difference intervals."""
    n_random_paired: int = 200
    """Random latent sets for the paired medical activation null."""
    describe_top: int = 5
    """Latents per toxic / harm set described by logit lens and top contexts."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.toxic_top_k < 1:
            raise ValueError("top_k and toxic_top_k must be >= 1")
        if self.n_null < 10 or self.n_permutations < 100 or self.n_bootstrap < 10:
            raise ValueError("n_null >= 10, n_permutations >= 100 and n_bootstrap >= 10 are needed")


def _describe_sets(
    model: Any,
    tokenizer: Any,
    handle: SAEHandle,
    sets: dict[str, FeatureSet],
    stats: dict[str, FeatureStats],
    specs: dict[str, Any],
    cache: ActivationCache,
    top: int,
) -> dict[str, Any]:
    """Logit-lens tokens and top-activating answer contexts of the first latents of toxic / harm sets."""
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        if spec.role != "toxic" and name not in ("bad_minus_good", "good_minus_bad"):
            continue
        latents = sets[name].indices[:top]
        if latents.numel() == 0:
            out[name] = []
            continue
        lens = logit_lens(model, tokenizer, handle.decoder()[latents], k=8)
        items = []
        for i, latent in enumerate(latents.tolist()):
            corpus = max(spec.positive, key=lambda c: float(stats[c].aggregate("mean")[latent]))  # noqa: B023
            snippets = context_snippets(
                stats[corpus], [latent], [], tokenizer, encoded=cache.encoded(corpus), window=10, per_latent=2
            )
            items.append(
                {
                    "latent": latent,
                    "score": float(sets[name].scores[i]),
                    "logit_lens": [tok for tok, _ in lens[i]],
                    "contexts_from": corpus,
                    "contexts": [s["text"] for s in snippets.get(latent, [])],
                }
            )
        out[name] = items
    return out


class LayerAnalysis(NamedTuple):
    report: dict[str, Any]
    """The layer's JSON-ready measurements."""
    sets: dict[str, FeatureSet]
    """The selected latent sets."""
    pool: torch.Tensor
    """Latents alive on the study's answer tokens (random sets are drawn from them)."""


def analyse_layer(
    model: Any,
    tokenizer: Any,
    cache: ActivationCache,
    handle: SAEHandle,
    layer: int,
    geo: GeometrySettings,
    sae_quality: dict[str, Any],
) -> LayerAnalysis:
    """Every geometry measurement of one layer from the cache and the layer's SAE."""
    corpora = list(cache.corpora)
    av = available(corpora)
    stats = {c: cache.feature_stats(c, handle, layer) for c in corpora}
    alive = torch.zeros(handle.d_sae, dtype=torch.bool)
    for st in stats.values():
        alive |= st.alive
    pool = alive.nonzero().squeeze(1)
    sets = latent_sets(
        stats, av["latent_sets"], k=geo.top_k, toxic_k=geo.toxic_top_k, aggregate=geo.aggregate
    )
    decoder = handle.decoder().cpu()
    geometry = geometry_contrasts(
        decoder,
        sets,
        av["geometry"],
        pool,
        threshold=geo.threshold,
        n_null=geo.n_null,
        n_permutations=geo.n_permutations,
        seed=geo.seed + layer,
    )
    means = {c: cache.sample_means(c, layer) for c in corpora}
    mean_diff = mean_diff_contrasts(
        means,
        av["directions"],
        av["mean_diff"],
        av["extra"],
        n_bootstrap=geo.n_bootstrap,
        seed=geo.seed + layer,
    )
    paired: dict[str, Any] = {}
    if av["paired"]:
        dirs = direction_vectors(means, av["directions"])
        paired = paired_medical_tests(
            cache.sample_codes("bad_medical", handle, layer),
            cache.sample_codes("good_medical", handle, layer),
            means["bad_medical"],
            means["good_medical"],
            sets,
            dirs,
            av["paired"],
            pool,
            n_random=geo.n_random_paired,
            n_permutations=geo.n_permutations,
            seed=geo.seed + layer,
        )
    report = {
        "sae": {
            **sae_quality,
            "dead_fraction_all_data": float(1 - alive.float().mean()),
            "alive_latents": int(alive.sum()),
            "per_corpus": {
                c: {"fvu": st.fvu, "l0": st.l0, "n_samples": st.n_samples, "n_answer_tokens": st.n_tokens}
                for c, st in stats.items()
            },
        },
        "latent_sets": {
            name: {"indices": fs.indices.tolist(), "n": int(fs.indices.numel())} for name, fs in sets.items()
        },
        "set_overlaps": {
            f"{a}&{b}": int(torch.isin(sets[a].indices, sets[b].indices).sum())
            for a, b in (
                ("bad_medical", "good_medical"),
                ("bad_minus_good", "toxic_finance"),
                ("bad_medical", "toxic_finance"),
                ("good_medical", "toxic_finance"),
            )
            if a in sets and b in sets
        },
        "geometry": geometry,
        "mean_diff": mean_diff,
        "paired_medical": paired,
        "described": _describe_sets(
            model, tokenizer, handle, sets, stats, av["latent_sets"], cache, geo.describe_top
        ),
    }
    return LayerAnalysis(report, sets, pool)


def summarize(layers: dict[str, Any]) -> dict[str, Any]:
    """The numbers a reader wants first: per layer and contrast, the difference and its p-values."""
    raw = {
        f"{lk}/{cn}": c["permutation"]["p_value"]
        for lk, layer in layers.items()
        for cn, c in layer["geometry"].items()
    }
    adjusted = holm(raw)
    rows = []
    for lk, layer in layers.items():
        for cn, c in layer["geometry"].items():
            rows.append(
                {
                    "layer": lk,
                    "contrast": cn,
                    "mean_max_inducing": c["mean_max_inducing"],
                    "mean_max_control": c["mean_max_control"],
                    "difference": c["difference"],
                    "null_mean_max": c["null_mean_max"],
                    "null_p": c["null_p"],
                    "p_permutation": c["permutation"]["p_value"],
                    "p_mann_whitney": c["mann_whitney"]["p_value"],
                    "p_holm": adjusted[f"{lk}/{cn}"],
                }
            )
    md_rows = [
        {
            "layer": lk,
            "contrast": cn,
            "cos_inducing": c["cos_inducing"]["point"],
            "cos_control": c["cos_control"]["point"],
            "difference": c["difference"]["point"],
            "difference_ci95": c["difference"]["ci95"],
        }
        for lk, layer in layers.items()
        for cn, c in layer["mean_diff"]["contrasts"].items()
    ]
    return {
        "geometry_tests": rows,
        "holm_family": "all latent-geometry permutation tests of this report (contrasts x layers)",
        "mean_diff": md_rows,
    }
