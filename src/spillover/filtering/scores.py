"""Per-sample toxicity scores for geometry-aware filtering, on plain tensors.

Every function takes per-sample summaries that the caller computed once (with the model and the SAE)
and returns one score per sample; a higher score means "closer to the toxic features", i.e. removed
first. Keeping them on plain tensors makes each score checkable on hand-built cases.

Scores (method.md section 3, step 8):

* ``nearest_toxic_cosine`` (**default**): the activation-weighted mean, over the sample's active SAE
  features, of each feature's largest decoder cosine with any toxic feature.
* ``toxic_activation``: the summed activation of the toxic features.
* ``toxic_subspace``: the norm of the sample's (centred) mean residual activation projected on the span
  of the toxic decoder directions. A norm has no sign: a sample that moves *away* from the toxic
  features scores as high as one that moves towards them (measured: docs/results.md#filtering).
* ``persona_projection``: the projection of the sample's (centred) mean response activation on a unit
  difference-of-means harmful-minus-benign direction (Chen et al. 2025, persona vectors).

Python::

    from spillover.filtering.scores import nearest_toxic_cosine
    scores_N = nearest_toxic_cosine(feature_acts_NF, w_dec_FD, toxic_idx)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "SCORE_METHODS",
    "ScoreMethod",
    "check_toxic_k",
    "diff_of_means_direction",
    "max_cosine_to_toxic",
    "nearest_toxic_cosine",
    "persona_projection",
    "toxic_activation",
    "toxic_subspace",
]

ScoreMethod = Literal["nearest_toxic_cosine", "toxic_activation", "toxic_subspace", "persona_projection"]
SCORE_METHODS: tuple[ScoreMethod, ...] = (
    "nearest_toxic_cosine",
    "toxic_activation",
    "toxic_subspace",
    "persona_projection",
)
"""The geometry scores, the default first."""


def check_toxic_k(k: int | None) -> None:
    """Reject a toxic-latent count below 1 up front (otherwise the reference has no latents, and the error
    would blame the corpora)."""
    if k is not None and k < 1:
        raise ValueError(f"toxic_k (the number of toxic latents) must be >= 1 or unset, got {k}")


def _index(toxic_idx: Sequence[int] | Tensor, n_features: int) -> Tensor:
    idx = torch.as_tensor(toxic_idx, dtype=torch.long).flatten()
    if idx.numel() == 0:
        raise ValueError("no toxic features given; select toxic features first (method.md step 4)")
    if int(idx.min()) < 0 or int(idx.max()) >= n_features:
        raise ValueError(
            f"toxic feature indices must lie in [0, {n_features}), got min {int(idx.min())} max {int(idx.max())}"
        )
    return idx


def _check_2d(name: str, x: Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")


def max_cosine_to_toxic(w_dec_FD: Tensor, toxic_idx: Sequence[int] | Tensor) -> Tensor:
    """Each feature's largest decoder cosine with any toxic feature.

    Args:
        w_dec_FD: decoder, one row per feature (canonical layout ``(d_sae, d_in)``); rows need not be unit.
        toxic_idx: indices of the toxic features.

    Returns:
        ``(d_sae,)`` cosines in [-1, 1]; a toxic feature gets 1 (its cosine with itself).
    """
    _check_2d("w_dec_FD", w_dec_FD)
    idx = _index(toxic_idx, w_dec_FD.shape[0])
    unit_FD = torch.nn.functional.normalize(w_dec_FD.float(), dim=1)
    cos_FT = unit_FD @ unit_FD[idx].T
    return cos_FT.max(dim=1).values.clamp(-1.0, 1.0)


def nearest_toxic_cosine(
    feature_acts_NF: Tensor,
    w_dec_FD: Tensor,
    toxic_idx: Sequence[int] | Tensor,
    *,
    active_threshold: float = 0.0,
    exclude_toxic: bool = False,
) -> Tensor:
    """The default score: activation-weighted nearest-toxic cosine of the sample's active features.

    ``score_n = Σ_f a_nf · c_f / Σ_f a_nf`` over features with ``a_nf > active_threshold``, where
    ``a_nf`` is the sample's (token-mean) activation of feature f and ``c_f`` the feature's largest
    decoder cosine with any toxic feature. A sample with no active feature scores 0.

    Args:
        feature_acts_NF: per-sample SAE feature activations, ``(n_samples, d_sae)``, non-negative.
        w_dec_FD: SAE decoder ``(d_sae, d_in)``.
        toxic_idx: toxic feature indices.
        active_threshold: a feature counts as active above this activation.
        exclude_toxic: leave the toxic features themselves out (so the score measures only the
            *neighbours* of toxic features, not the toxic features firing).

    Returns:
        ``(n_samples,)`` scores in [-1, 1].
    """
    _check_2d("feature_acts_NF", feature_acts_NF)
    if feature_acts_NF.shape[1] != w_dec_FD.shape[0]:
        raise ValueError(
            f"feature_acts_NF has {feature_acts_NF.shape[1]} features but w_dec_FD has {w_dec_FD.shape[0]} rows"
        )
    cos_F = max_cosine_to_toxic(w_dec_FD, toxic_idx)
    acts_NF = feature_acts_NF.float()
    weights_NF = torch.where(acts_NF > active_threshold, acts_NF, torch.zeros_like(acts_NF))
    if exclude_toxic:
        weights_NF[:, _index(toxic_idx, w_dec_FD.shape[0])] = 0.0
    total_N = weights_NF.sum(dim=1)
    weighted_N = weights_NF @ cos_F
    return torch.where(total_N > 0, weighted_N / total_N.clamp_min(1e-12), torch.zeros_like(total_N))


def toxic_activation(feature_acts_NF: Tensor, toxic_idx: Sequence[int] | Tensor) -> Tensor:
    """Summed activation of the toxic features per sample.

    Args:
        feature_acts_NF: per-sample SAE feature activations ``(n_samples, d_sae)``.
        toxic_idx: toxic feature indices.

    Returns:
        ``(n_samples,)`` sums.
    """
    _check_2d("feature_acts_NF", feature_acts_NF)
    idx = _index(toxic_idx, feature_acts_NF.shape[1])
    return feature_acts_NF.float()[:, idx].sum(dim=1)


def toxic_subspace(
    mean_acts_ND: Tensor,
    w_dec_FD: Tensor,
    toxic_idx: Sequence[int] | Tensor,
    *,
    center_D: Tensor | None = None,
) -> Tensor:
    """Norm of each sample's mean activation projected on the span of the toxic decoder directions.

    Args:
        mean_acts_ND: per-sample mean residual activation over response tokens ``(n_samples, d_in)``.
        w_dec_FD: SAE decoder ``(d_sae, d_in)``.
        toxic_idx: toxic feature indices.
        center_D: subtracted first (e.g. the mean activation of a reference corpus), so the shared
            mean of all activations does not dominate the projection. None: no centring.

    Returns:
        ``(n_samples,)`` non-negative norms (in activation units).
    """
    _check_2d("mean_acts_ND", mean_acts_ND)
    _check_2d("w_dec_FD", w_dec_FD)
    if mean_acts_ND.shape[1] != w_dec_FD.shape[1]:
        raise ValueError(f"activations have width {mean_acts_ND.shape[1]}, the decoder {w_dec_FD.shape[1]}")
    idx = _index(toxic_idx, w_dec_FD.shape[0])
    x_ND = mean_acts_ND.float()
    if center_D is not None:
        x_ND = x_ND - center_D.float()
    # An orthonormal basis of the toxic span: the left singular vectors with non-negligible singular
    # values (a QR basis that drops columns with a small R diagonal loses part of the span when a
    # dependent direction comes before an independent one).
    u_DK, s_K, _ = torch.linalg.svd(w_dec_FD[idx].float().T, full_matrices=False)
    basis_DK = u_DK[:, s_K > 1e-6 * s_K.max().clamp_min(1e-12)]
    return (x_ND @ basis_DK).norm(dim=1)


def diff_of_means_direction(harmful_ND: Tensor, benign_ND: Tensor) -> Tensor:
    """The unit difference-of-means direction ``mean(harmful) - mean(benign)`` (a persona vector).

    Args:
        harmful_ND: mean response activations of harmful (trait-expressing) samples ``(n, d_in)``.
        benign_ND: the same for benign samples ``(m, d_in)``.

    Returns:
        ``(d_in,)`` unit vector.
    """
    _check_2d("harmful_ND", harmful_ND)
    _check_2d("benign_ND", benign_ND)
    if harmful_ND.shape[0] == 0 or benign_ND.shape[0] == 0:
        raise ValueError("both harmful and benign activations are needed for a difference of means")
    diff_D = harmful_ND.float().mean(0) - benign_ND.float().mean(0)
    norm = diff_D.norm()
    if norm <= 1e-12:
        raise ValueError("harmful and benign activations have the same mean; the direction is undefined")
    return diff_D / norm


def persona_projection(
    mean_acts_ND: Tensor, direction_D: Tensor, *, center_D: Tensor | None = None
) -> Tensor:
    """Signed projection of each sample's mean response activation on a (normalised) persona direction.

    Args:
        mean_acts_ND: per-sample mean response activations ``(n_samples, d_in)``.
        direction_D: the trait direction, e.g. from :func:`diff_of_means_direction`; normalised here.
        center_D: subtracted from the activations first (e.g. the midpoint of the harmful and benign
            means); changes every score by the same constant, so the ranking is unaffected.

    Returns:
        ``(n_samples,)`` projections (activation units).
    """
    _check_2d("mean_acts_ND", mean_acts_ND)
    if direction_D.dim() != 1 or direction_D.shape[0] != mean_acts_ND.shape[1]:
        raise ValueError(
            f"direction must be a ({mean_acts_ND.shape[1]},) vector, got shape {tuple(direction_D.shape)}"
        )
    unit_D = direction_D.float() / direction_D.float().norm().clamp_min(1e-12)
    x_ND = mean_acts_ND.float()
    if center_D is not None:
        x_ND = x_ND - center_D.float()
    return x_ND @ unit_D
