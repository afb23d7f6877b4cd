"""The study's datasets measured against the EM persona, per layer, with nulls and Holm correction.

For each layer, ``analyse_persona`` fits and validates the persona (``spillover.realmodel.persona``) on
its own activation cache, then measures the study's datasets against it with the study's own machinery
(``spillover.realmodel.measures``):

* latent geometry: nearest-persona decoder cosines of each dataset's latent set (the sets of the main
  analysis) against a control's (``PERSONA_CONTRASTS``), with the random-latent-set null and the
  label-swap permutation test;
* mean differences: cos(dataset shift, persona direction) minus a control's, bootstrap intervals
  (``PERSONA_MEAN_DIFF``; here the persona direction is the sample-weighted difference, the pairs being
  capped per question);
* paired medical: per prompt, the bad answer's minus the good answer's projection on the persona direction
  and activation of the persona latents (sign-flip tests; the latents against random alive latent sets).

``summarize_persona`` collects every p-value of every layer into one Holm family.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from spillover.realmodel.analysis import GeometrySettings, LayerAnalysis
from spillover.realmodel.cache import ActivationCache
from spillover.realmodel.contrasts import (
    DIRECTIONS,
    PERSONA,
    PERSONA_CONTRASTS,
    PERSONA_MEAN_DIFF,
    DirectionSpec,
)
from spillover.realmodel.measures import geometry_contrasts, holm, mean_diff_contrasts, paired_medical_tests
from spillover.realmodel.persona import PersonaFit, persona_layer
from spillover.realmodel.persona_data import PersonaData, PersonaSettings
from spillover.sae.load import SAEHandle

__all__ = ["PersonaAnalysis", "analyse_persona", "summarize_persona"]

_COSINE_WITH = (
    "harm_medical_paired",
    "toxic_finance",
    "toxic_medical",
    "shift_bad_medical",
    "shift_good_medical",
)
"""Study directions whose cosine with the persona direction is reported."""


def _geometry_and_means(
    cache: ActivationCache,
    handle: SAEHandle,
    layer: int,
    analysis: LayerAnalysis,
    persona_means: dict[str, torch.Tensor],
    persona_direction: torch.Tensor,
    persona_set: Any,
    toxic: str,
    benign: str,
    geo: GeometrySettings,
) -> dict[str, Any]:
    sets = {**analysis.sets, PERSONA: persona_set}
    contrasts = {
        n: c for n, c in PERSONA_CONTRASTS.items() if all(s in sets for s in (*c.inducing, *c.control))
    }
    decoder = handle.decoder().cpu()
    geometry = geometry_contrasts(
        decoder,
        sets,
        contrasts,
        analysis.pool,
        threshold=geo.threshold,
        n_null=geo.n_null,
        n_permutations=geo.n_permutations,
        seed=geo.seed + layer,
    )
    means = {c: cache.sample_means(c, layer) for c in cache.corpora}
    means.update(persona_means)
    specs = {n: d for n, d in DIRECTIONS.items() if set(d.positive + d.negative) <= set(means)}
    specs[PERSONA] = DirectionSpec((toxic,), (benign,), f"{toxic} minus {benign} (matched pairs)")
    md = {n: c for n, c in PERSONA_MEAN_DIFF.items() if c.inducing in specs and c.control in specs}
    mean_diff = mean_diff_contrasts(
        means,
        specs,
        md,
        [(PERSONA, other) for other in _COSINE_WITH if other in specs],
        n_bootstrap=geo.n_bootstrap,
        seed=geo.seed + layer,
    )
    paired: dict[str, Any] = {}
    if "bad_medical" in cache.corpora and "good_medical" in cache.corpora:
        paired = paired_medical_tests(
            cache.sample_codes("bad_medical", handle, layer),
            cache.sample_codes("good_medical", handle, layer),
            means["bad_medical"],
            means["good_medical"],
            {PERSONA: persona_set},
            {PERSONA: persona_direction},
            [PERSONA],
            analysis.pool,
            n_random=geo.n_random_paired,
            n_permutations=geo.n_permutations,
            seed=geo.seed + layer,
        )[PERSONA]
    return {"geometry": geometry, "mean_diff": mean_diff, "paired_medical": paired}


class PersonaAnalysis(NamedTuple):
    report: dict[str, Any]
    """JSON-ready: the persona data's counts, per layer its fit and the datasets against it, the summary."""
    fits: dict[str, PersonaFit]
    """SAE key -> the layer's persona direction and latents."""


def analyse_persona(
    model: Any,
    tokenizer: Any,
    cache: ActivationCache,
    persona_cache: ActivationCache,
    persona: PersonaData,
    saes: Mapping[int, SAEHandle],
    analyses: Mapping[int, LayerAnalysis],
    settings: PersonaSettings,
    geo: GeometrySettings,
) -> PersonaAnalysis:
    """Per layer: the persona's fit and validation, and the datasets' geometry against it (docstring)."""
    toxic, benign = persona.meta["corpora"]["toxic"], persona.meta["corpora"]["benign"]
    layers: dict[str, Any] = {}
    fits: dict[str, PersonaFit] = {}
    for layer, handle in saes.items():
        means = {c: persona_cache.sample_means(c, layer) for c in (toxic, benign)}
        codes = {c: persona_cache.sample_codes(c, handle, layer) for c in (toxic, benign)}
        fit = persona_layer(
            model,
            tokenizer,
            means,
            codes,
            handle.decoder().cpu(),
            persona.corpora,
            persona.groups,
            toxic,
            benign,
            settings,
            seed=settings.seed + layer,
        )
        fits[handle.key] = fit
        layers[f"layer_{layer}"] = {
            "persona": fit.report,
            **_geometry_and_means(
                cache, handle, layer, analyses[layer], means, fit.direction, fit.latents, toxic, benign, geo
            ),
        }
    return PersonaAnalysis(
        {"data": persona.meta, "layers": layers, "summary": summarize_persona(layers)}, fits
    )


def summarize_persona(layers: Mapping[str, Any]) -> dict[str, Any]:
    """One row per test and layer, Holm-adjusted over all of them (one family)."""
    rows: list[dict[str, Any]] = []
    for lk, layer in layers.items():
        p = layer["persona"]
        for readout in ("direction", "direction_topic_orthogonal", "latent_set"):
            pooled = p[readout]["pooled"]
            rows.append(
                {
                    "layer": lk,
                    "test": f"heldout_auroc:{readout}",
                    "value": pooled["auroc"],
                    "ci95": pooled["ci95"],
                    "p": pooled["p_label_swap"],
                    "within_question_auroc": pooled["within_question_auroc"],
                    "within_question_ci95": pooled["within_question_ci95"],
                    "topic_spread_over_gap": p[readout]["topic_control"]["spread_over_gap"],
                }
            )
        for name, c in layer["geometry"].items():
            rows.append(
                {
                    "layer": lk,
                    "test": f"geometry:{name}",
                    "value": c["difference"],
                    "null_p": c["null_p"],
                    "p": c["permutation"]["p_value"],
                }
            )
        for name, c in layer["mean_diff"]["contrasts"].items():
            rows.append(
                {
                    "layer": lk,
                    "test": f"mean_diff:{name}",
                    "value": c["difference"]["point"],
                    "ci95": c["difference"]["ci95"],
                    "p": c["difference"]["boot_frac_le_0"],
                }
            )
        paired = layer["paired_medical"]
        for kind in ("projection", "latent_activation"):
            if kind in paired:
                rows.append(
                    {
                        "layer": lk,
                        "test": f"paired_medical:{kind}",
                        "value": paired[kind]["mean_difference"],
                        "p": paired[kind]["sign_flip"]["p_value"],
                        **(
                            {"p_vs_random_sets": paired[kind]["p_vs_random_sets"]}
                            if kind == "latent_activation"
                            else {}
                        ),
                    }
                )
    adjusted = holm({f"{r['layer']}/{r['test']}": r["p"] for r in rows})
    for r in rows:
        r["p_holm"] = adjusted[f"{r['layer']}/{r['test']}"]
    return {
        "tests": rows,
        "holm_family": "every persona test of this report (held-out AUROC, geometry permutation, "
        "mean-difference bootstrap share <= 0, paired sign-flip) x layers",
    }
