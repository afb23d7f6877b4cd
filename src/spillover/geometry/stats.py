"""Statistics for feature geometry: a random-feature-set null and inducing-vs-control tests.

* ``random_set_null``: how close would ``n`` latents drawn at random (from the latents alive on the
  data, excluding the toxic set) sit to the toxic set? Gives the null mean and spread of ``mean_max``
  and ``mean``, a z-score and a one-sided empirical p-value for the observed set.
* ``permutation_test``: difference of means between two groups of values (e.g. the nearest-toxic
  cosines of inducing datasets' latents vs control datasets' latents), labels shuffled within strata
  (e.g. within a seed or an inducing/control pair), one-sided by default.
* ``sign_flip_test``: paired differences (inducing minus its control, per pair and seed), exact when
  there are at most 20 of them.
* ``mann_whitney``: scipy's rank test on the same two groups, as the paper reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch

from spillover.geometry.similarity import cosine_matrix

__all__ = [
    "NullResult",
    "TestResult",
    "mann_whitney",
    "permutation_test",
    "random_set_null",
    "sign_flip_test",
]

Alternative = Literal["greater", "less", "two-sided"]


class NullResult(NamedTuple):
    """A statistic of the observed feature set against random sets of the same size."""

    observed: float
    null_mean: float
    null_std: float
    z: float
    p_value: float
    """One-sided: share of random sets (plus one) at least as close as the observed set."""
    n_draws: int

    def as_dict(self) -> dict[str, float | int]:
        return dict(self._asdict())


class TestResult(NamedTuple):
    """A two-group or paired comparison."""

    statistic: float
    """Difference of means (first group minus second), or mean paired difference; U for Mann-Whitney."""
    p_value: float
    n_a: int
    n_b: int
    method: str
    alternative: str

    def as_dict(self) -> dict[str, float | int | str]:
        return dict(self._asdict())


def random_set_null(
    decoder_FD: torch.Tensor,
    toxic_idx: torch.Tensor,
    set_size: int,
    *,
    observed_mean_max: float,
    observed_mean: float,
    pool: torch.Tensor | None = None,
    n_draws: int = 1000,
    seed: int = 0,
) -> dict[str, NullResult]:
    """Null distributions of ``mean_max`` and ``mean`` for random latent sets of ``set_size``.

    Args:
        decoder_FD: decoder directions ``(d_sae, d_in)``.
        toxic_idx: the toxic latents.
        set_size: size of the compared dataset set (shared latents already excluded).
        observed_mean_max: the dataset set's mean nearest-toxic cosine.
        observed_mean: the dataset set's mean pairwise cosine.
        pool: latents to draw from (default all); the toxic latents are always removed from it.
        n_draws: random sets drawn.
        seed: RNG seed.

    Returns:
        ``{"mean_max": NullResult, "mean": NullResult}`` (NaN entries when nothing can be drawn).
    """
    d_sae = decoder_FD.shape[0]
    pool_idx = torch.arange(d_sae) if pool is None else pool.long().cpu()
    pool_idx = pool_idx[~torch.isin(pool_idx, toxic_idx.long().cpu())]
    nan = NullResult(float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), 0)
    if set_size < 1 or len(pool_idx) < set_size or toxic_idx.numel() == 0:
        return {
            "mean_max": nan._replace(observed=observed_mean_max),
            "mean": nan._replace(observed=observed_mean),
        }
    sim = cosine_matrix(decoder_FD.cpu(), pool_idx, toxic_idx.cpu())
    per_latent = {"mean_max": sim.max(dim=1).values.double(), "mean": sim.mean(dim=1).double()}
    gen = torch.Generator().manual_seed(seed)
    draws_RS = torch.stack([torch.randperm(len(pool_idx), generator=gen)[:set_size] for _ in range(n_draws)])
    out: dict[str, NullResult] = {}
    for name, observed in (("mean_max", observed_mean_max), ("mean", observed_mean)):
        null_R = per_latent[name][draws_RS].mean(dim=1)
        mu, sd = float(null_R.mean()), float(null_R.std())
        # A NaN observation ties with nothing; without this guard it would get the smallest p.
        p = (
            (1 + int((null_R >= observed - 1e-12).sum())) / (n_draws + 1)
            if not math.isnan(observed)
            else float("nan")
        )
        z = (observed - mu) / sd if sd > 0 else float("nan")
        out[name] = NullResult(observed, mu, sd, z, p, n_draws)
    return out


def _p_from_null(observed: float, null: np.ndarray, alternative: Alternative) -> float:
    eps = 1e-12 * max(1.0, abs(observed))
    if alternative == "greater":
        hits = int((null >= observed - eps).sum())
    elif alternative == "less":
        hits = int((null <= observed + eps).sum())
    else:
        hits = int((np.abs(null) >= abs(observed) - eps).sum())
    return hits / len(null)


def permutation_test(
    a: Sequence[float],
    b: Sequence[float],
    *,
    strata_a: Sequence[object] | None = None,
    strata_b: Sequence[object] | None = None,
    n_permutations: int = 10000,
    alternative: Alternative = "greater",
    seed: int = 0,
) -> TestResult:
    """Permutation test of ``mean(a) - mean(b)``, shuffling group labels within strata.

    Args:
        a: values of the first group (e.g. inducing datasets' nearest-toxic cosines).
        b: values of the second group (controls).
        strata_a: stratum of each ``a`` value (e.g. seed or pair); labels are permuted within strata.
        strata_b: stratum of each ``b`` value.
        n_permutations: random relabellings (the observed labelling is counted once in the null).
        alternative: ``"greater"`` tests mean(a) > mean(b).
        seed: RNG seed.
    """
    s_a = [0] * len(a) if strata_a is None else list(strata_a)
    s_b = [0] * len(b) if strata_b is None else list(strata_b)
    if len(s_a) != len(a) or len(s_b) != len(b):
        raise ValueError(f"{len(s_a)}/{len(s_b)} strata for {len(a)}/{len(b)} values")
    # NaN values are left out (with their strata): one NaN would make every mean NaN and p 0.
    keep_a = [i for i, v in enumerate(a) if not math.isnan(v)]
    keep_b = [i for i, v in enumerate(b) if not math.isnan(v)]
    x = np.asarray([a[i] for i in keep_a] + [b[i] for i in keep_b], dtype=float)
    n_a, n_b = len(keep_a), len(keep_b)
    if n_a == 0 or n_b == 0:
        return TestResult(float("nan"), float("nan"), n_a, n_b, "permutation", alternative)
    is_a = np.zeros(len(x), dtype=bool)
    is_a[:n_a] = True
    strata = [s_a[i] for i in keep_a] + [s_b[i] for i in keep_b]
    groups = [np.flatnonzero(np.asarray([s == k for s in strata])) for k in dict.fromkeys(strata)]
    observed = x[is_a].mean() - x[~is_a].mean()
    rng = np.random.default_rng(seed)
    null = np.empty(n_permutations + 1)
    null[0] = observed
    labels = is_a.copy()
    for i in range(1, n_permutations + 1):
        for g in groups:
            labels[g] = rng.permutation(is_a[g])
        null[i] = x[labels].mean() - x[~labels].mean()
    return TestResult(
        float(observed), _p_from_null(observed, null, alternative), n_a, n_b, "permutation", alternative
    )


def sign_flip_test(
    differences: Sequence[float],
    *,
    n_permutations: int = 10000,
    alternative: Alternative = "greater",
    seed: int = 0,
) -> TestResult:
    """Paired test of ``mean(differences) > 0`` by flipping signs (exact for up to 20 pairs)."""
    d = np.asarray([v for v in differences if not math.isnan(v)], dtype=float)
    n = len(d)
    if n == 0:
        return TestResult(float("nan"), float("nan"), 0, 0, "sign-flip", alternative)
    observed = float(d.mean())
    if n <= 20:
        # Every sign pattern's mean without a 2^n x n sign matrix: flipped[k] sums the values whose sign
        # is flipped in pattern k (built by doubling); pattern 0 flips none, so null[0] is the observed mean.
        flipped = np.zeros(1)
        for v in d:
            flipped = np.concatenate([flipped, flipped + v])
        null = (d.sum() - 2.0 * flipped) / n
        method = "sign-flip (exact)"
    else:
        rng = np.random.default_rng(seed)
        signs = np.vstack([np.ones(n), rng.choice((1.0, -1.0), size=(n_permutations, n))])
        method = "sign-flip"
        null = signs @ d / n
    return TestResult(observed, _p_from_null(observed, null, alternative), n, n, method, alternative)


def mann_whitney(
    a: Sequence[float], b: Sequence[float], *, alternative: Alternative = "greater"
) -> TestResult:
    """Mann-Whitney U test that values in ``a`` tend to exceed those in ``b`` (scipy)."""
    from scipy.stats import mannwhitneyu

    if len(a) == 0 or len(b) == 0:
        return TestResult(float("nan"), float("nan"), len(a), len(b), "mann-whitney", alternative)
    res = mannwhitneyu(list(a), list(b), alternative=alternative)
    return TestResult(float(res.statistic), float(res.pvalue), len(a), len(b), "mann-whitney", alternative)
