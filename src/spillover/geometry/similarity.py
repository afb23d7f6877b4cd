"""Decoder-direction geometry between a dataset's latents and the toxic latents, and the mean-difference measure.

With unit decoder rows ``W`` (``(d_sae, d_in)``), the similarity matrix is
``S = W[F_D] @ W[F_tox].T``. Latents in both sets are excluded from the dataset side (their cosine
is trivially 1) and counted (``n_shared``). Summaries: the pairwise distribution, its mean, the mean
over dataset latents of the cosine to the nearest toxic latent (``mean_max``), the share of pairs and
of dataset latents above a threshold, and ``proximity``: the mean nearest-toxic cosine over *all*
dataset latents with shared ones counting 1, so a dataset that uses the toxic latents themselves is not
scored as far from them.

The mean-difference measure needs no SAE: ``cos(mean(D) - mean(ref), mean(toxic) - mean(benign))``
over per-sample mean activations at the same site. It is the persona-direction view of the same
question (how the two rank datasets by EM, measured: docs/results.md#organism-geometry).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from spillover.geometry.features import FeatureSet, FeatureStats

__all__ = [
    "GeometrySummary",
    "cosine",
    "cosine_matrix",
    "feature_geometry",
    "mean_difference_direction",
    "mean_difference_score",
    "summarize_cosines",
    "excess_toxic_activation",
]

HIST_BINS = 40
"""Pairwise-cosine histograms use this many equal bins on [-1, 1]."""


def cosine_matrix(decoder_FD: torch.Tensor, rows_a: torch.Tensor, rows_b: torch.Tensor) -> torch.Tensor:
    """Cosines ``(len(rows_a), len(rows_b))`` between decoder rows (normalised here, whatever their norm)."""
    w = decoder_FD.float()
    a = w[rows_a.long()]
    b = w[rows_b.long()]
    a = a / a.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    b = b / b.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return a @ b.T


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    """Cosine of two vectors (0 when either is zero)."""
    nu, nv = float(u.float().norm()), float(v.float().norm())
    if nu == 0 or nv == 0:
        return 0.0
    return float(u.float() @ v.float()) / (nu * nv)


class GeometrySummary(NamedTuple):
    """How close a dataset's latents sit to the toxic latents (decoder cosines)."""

    n_dataset: int
    """Dataset latents compared (shared ones excluded)."""
    n_toxic: int
    n_shared: int
    """Latents in both sets (excluded from the dataset side)."""
    mean: float
    """Mean pairwise cosine (NaN when no pair is left)."""
    mean_max: float
    """Mean over dataset latents of the cosine to their nearest toxic latent."""
    frac_pairs_above: float
    """Share of pairs with cosine above the threshold."""
    frac_nearest_above: float
    """Share of dataset latents whose nearest toxic latent's cosine is above the threshold."""
    proximity: float
    """Mean nearest-toxic cosine over all dataset latents, shared latents counting 1."""
    threshold: float
    max_cos: list[float]
    """Per compared dataset latent (in set order), the cosine to its nearest toxic latent."""
    nearest: list[int]
    """Per compared dataset latent, the index of that nearest toxic latent."""
    latents: list[int]
    """The compared dataset latents (shared ones excluded)."""
    hist: list[int]
    """Histogram of the pairwise cosines (``HIST_BINS`` bins on [-1, 1])."""

    def as_dict(self) -> dict[str, object]:
        return dict(self._asdict())


def summarize_cosines(
    sim_AB: torch.Tensor,
    *,
    threshold: float,
    n_shared: int = 0,
    latents: list[int] | None = None,
    nearest_ids: torch.Tensor | None = None,
) -> GeometrySummary:
    """Summaries of a dataset-by-toxic cosine matrix ``(A, B)`` (shared latents already removed)."""
    a, b = sim_AB.shape
    if a and b:
        max_cos, arg = sim_AB.max(dim=1)
        nearest = (nearest_ids[arg] if nearest_ids is not None else arg).tolist()
        mean = float(sim_AB.mean())
        mean_max = float(max_cos.mean())
        frac_pairs = float((sim_AB > threshold).float().mean())
        frac_nearest = float((max_cos > threshold).float().mean())
        hist = torch.histc(sim_AB.clamp(-1, 1), bins=HIST_BINS, min=-1.0, max=1.0).long().tolist()
        max_list = max_cos.tolist()
    else:
        max_list, nearest = [], []
        mean = mean_max = frac_pairs = frac_nearest = float("nan")
        hist = [0] * HIST_BINS
    total = a + n_shared
    proximity = (sum(max_list) + n_shared) / total if total and b else float("nan")
    return GeometrySummary(
        n_dataset=a,
        n_toxic=b,
        n_shared=n_shared,
        mean=mean,
        mean_max=mean_max,
        frac_pairs_above=frac_pairs,
        frac_nearest_above=frac_nearest,
        proximity=proximity,
        threshold=threshold,
        max_cos=max_list,
        nearest=nearest,
        latents=latents if latents is not None else list(range(a)),
        hist=hist,
    )


def feature_geometry(
    decoder_FD: torch.Tensor,
    dataset: FeatureSet | torch.Tensor,
    toxic: FeatureSet | torch.Tensor,
    *,
    threshold: float = 0.3,
) -> GeometrySummary:
    """Decoder-cosine geometry between a dataset's latents and the toxic latents.

    Args:
        decoder_FD: decoder directions ``(d_sae, d_in)`` (canonical layout; normalised here).
        dataset: the dataset's feature set (or latent indices).
        toxic: the toxic feature set (or latent indices).
        threshold: cosine above which a pair / a nearest neighbour counts as close.
    """
    d_idx = dataset.indices if isinstance(dataset, FeatureSet) else dataset
    t_idx = toxic.indices if isinstance(toxic, FeatureSet) else toxic
    d_idx, t_idx = d_idx.long().cpu(), t_idx.long().cpu()
    shared = torch.isin(d_idx, t_idx)
    kept = d_idx[~shared]
    sim = cosine_matrix(decoder_FD.cpu(), kept, t_idx)
    return summarize_cosines(
        sim, threshold=threshold, n_shared=int(shared.sum()), latents=kept.tolist(), nearest_ids=t_idx
    )


def mean_difference_direction(stats: FeatureStats, reference: FeatureStats) -> torch.Tensor:
    """``mean(stats) - mean(reference)`` of the per-sample mean activations, ``(d_in,)``."""
    return stats.resid_mean - reference.resid_mean


def mean_difference_score(
    dataset: FeatureStats, reference: FeatureStats, toxic: FeatureStats, benign: FeatureStats
) -> float:
    """``cos(mean(D) - mean(ref), mean(toxic) - mean(benign))`` at the statistics' site."""
    return cosine(mean_difference_direction(dataset, reference), mean_difference_direction(toxic, benign))


def excess_toxic_activation(
    dataset: FeatureStats, reference: FeatureStats, toxic: FeatureSet, *, aggregate: str = "mean"
) -> float:
    """Mean over the toxic latents of the dataset's extra activation on them, ``score(D) - score(ref)``."""
    if toxic.indices.numel() == 0:
        return float("nan")
    diff = dataset.aggregate(aggregate) - reference.aggregate(aggregate)  # type: ignore[arg-type]
    return float(diff[toxic.indices].mean())
