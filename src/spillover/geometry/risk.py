"""A dataset's EM-risk score, computed before any fine-tuning from its activation geometry.

Definition (recorded in every geometry.json under ``risk.definition``):

    risk(D) = mean over the risk layers L of  m_L(D)

where the measure ``m`` is one of

* ``mean_diff`` (default): ``cos(mean_D - mean_ref, mean_toxic - mean_benign)`` at layer L, over
  per-sample mean activations of the selected (answer) tokens. In [-1, 1]; 0 means the dataset moves
  the model's activations orthogonally to the toxic direction. Needs no SAE.
* ``sae_proximity``: the SAE view: the mean over the dataset's top-k latents of the decoder cosine to
  the nearest toxic latent (a latent that is itself a toxic latent counts 1), minus the same quantity
  for random latent sets of the same size (the null mean). In cosine units; 0 is chance level.
* ``combined``: the mean of the two.

The risk layers default to the middle one of the layers analysed (``len // 2``), and the measure to
``mean_diff``; the paper used SAE features, so the measure is a configuration choice and both are always
reported (measured: docs/results.md#organism-geometry).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

__all__ = ["RISK_DEFINITION", "RiskMeasure", "default_risk_layers", "layer_measure", "risk_score"]

RiskMeasure = Literal["mean_diff", "sae_proximity", "combined"]

RISK_DEFINITION = (
    "risk(D) = mean over risk layers of m(D); m = mean_diff: cos(mean_D - mean_ref, mean_toxic - mean_benign) "
    "of per-sample mean answer-token activations; m = sae_proximity: mean over D's top-k SAE latents of the "
    "decoder cosine to the nearest toxic latent (shared latents count 1) minus its random-latent-set null mean; "
    "m = combined: the mean of the two."
)


def default_risk_layers(layers: Sequence[str]) -> list[str]:
    """The middle analysed layer (the one the prototype found most predictive)."""
    if not layers:
        return []
    return [list(layers)[len(layers) // 2]]


def layer_measure(metrics: Mapping[str, float], measure: RiskMeasure) -> float:
    """The risk measure at one layer, from that layer's metrics (``mean_diff``, ``proximity``, ``null_mean_max``)."""
    mean_diff = float(metrics.get("mean_diff", math.nan))
    sae = float(metrics.get("proximity", math.nan)) - float(metrics.get("null_mean_max", math.nan))
    if measure == "mean_diff":
        return mean_diff
    if measure == "sae_proximity":
        return sae
    if measure == "combined":
        return (mean_diff + sae) / 2
    raise ValueError(f"unknown risk measure {measure!r}; use mean_diff, sae_proximity or combined")


def risk_score(
    per_layer: Mapping[str, Mapping[str, float]], measure: RiskMeasure, layers: Sequence[str]
) -> float:
    """``risk(D)`` from its per-layer metrics (``{layer key: metrics}``), averaged over ``layers``."""
    missing = [layer for layer in layers if layer not in per_layer]
    if missing:
        raise KeyError(f"risk layers {missing} were not analysed; analysed: {sorted(per_layer)}")
    values = [layer_measure(per_layer[layer], measure) for layer in layers]
    return sum(values) / len(values) if values else math.nan
