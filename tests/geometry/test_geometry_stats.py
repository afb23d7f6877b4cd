from __future__ import annotations

import numpy as np
import pytest
import torch

from spillover.geometry.stats import mann_whitney, permutation_test, random_set_null, sign_flip_test


def test_permutation_test_detects_a_shift_and_is_calibrated_under_the_null():
    rng = np.random.default_rng(0)
    shifted = permutation_test(rng.normal(1, 1, 40), rng.normal(0, 1, 40), n_permutations=2000)
    assert shifted.statistic > 0.5 and shifted.p_value < 0.01
    rejections = sum(
        permutation_test(rng.normal(0, 1, 15), rng.normal(0, 1, 15), n_permutations=200, seed=i).p_value
        < 0.05
        for i in range(200)
    )
    assert 2 <= rejections <= 22  # about 5% of 200
    less = permutation_test([0.0] * 10, [1.0] * 10, n_permutations=500, alternative="less")
    assert less.p_value < 0.01
    # NaN values are left out, not turned into a p of 0.
    with_nan = permutation_test([1.0, 2.0, float("nan")], [1.0, 2.0], n_permutations=200)
    assert with_nan.n_a == 2 and with_nan.statistic == 0.0 and with_nan.p_value > 0.5


def test_stratified_permutation_respects_strata():
    # Within each stratum the groups are identical, so shuffling within strata can never change the
    # statistic: every relabelling ties with the observed one and p is 1.
    a = [0.0, 0.0, 5.0, 5.0]
    b = [0.0, 0.0, 5.0, 5.0]
    strat_a = ["x", "x", "y", "y"]
    res = permutation_test(a, b, strata_a=strat_a, strata_b=strat_a, n_permutations=300)
    assert res.statistic == 0.0 and res.p_value == 1.0
    # Unequal stratum sizes: pooled shuffling would see a difference that stratified shuffling attributes to strata.
    a2, b2 = [5.0, 5.0, 5.0, 0.0], [5.0, 0.0, 0.0, 0.0]
    s_a, s_b = ["y", "y", "y", "x"], ["y", "x", "x", "x"]
    strat = permutation_test(a2, b2, strata_a=s_a, strata_b=s_b, n_permutations=2000)
    pooled = permutation_test(a2, b2, n_permutations=2000)
    assert strat.p_value > pooled.p_value


def test_sign_flip_is_exact():
    res = sign_flip_test([0.1, 0.2, 0.3, 0.05, 0.4])
    assert res.p_value == pytest.approx(1 / 32) and res.method == "sign-flip (exact)"
    assert sign_flip_test([0.1, -0.1]).p_value == pytest.approx(0.75)
    assert np.isnan(sign_flip_test([]).p_value)


def test_exact_sign_flip_matches_brute_force_and_handles_20_pairs():
    import itertools

    d = np.random.default_rng(1).normal(0.2, 1.0, size=7)
    null = [np.mean(np.array(s) * d) for s in itertools.product((1.0, -1.0), repeat=7)]
    for alt, hits in (
        ("greater", sum(v >= d.mean() - 1e-12 for v in null)),
        ("less", sum(v <= d.mean() + 1e-12 for v in null)),
        ("two-sided", sum(abs(v) >= abs(d.mean()) - 1e-12 for v in null)),
    ):
        assert sign_flip_test(list(d), alternative=alt).p_value == pytest.approx(hits / 128)
    # 20 pairs, all positive: only the observed pattern is as extreme (2^20 patterns, enumerated).
    res = sign_flip_test([1.0 + 0.01 * i for i in range(20)])
    assert res.method == "sign-flip (exact)" and res.p_value == pytest.approx(2.0**-20)


def test_random_set_null_flags_sets_aligned_with_toxic_latents():
    gen = torch.Generator().manual_seed(0)
    d_in, d_sae = 64, 400
    w = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=gen), dim=1)
    toxic = torch.arange(5)
    # Ten latents built close to the toxic ones vs ten random latents.
    near = torch.nn.functional.normalize(
        w[toxic].repeat(2, 1) + 0.5 * torch.randn(10, d_in, generator=gen) / d_in**0.5, dim=1
    )
    w[100:110] = near
    sim_near = w[100:110] @ w[toxic].T
    res = random_set_null(
        w,
        toxic,
        10,
        observed_mean_max=float(sim_near.max(1).values.mean()),
        observed_mean=float(sim_near.mean()),
        n_draws=500,
    )
    assert res["mean_max"].p_value < 0.01 and res["mean_max"].z > 5
    sim_rand = w[200:210] @ w[toxic].T
    res_rand = random_set_null(
        w,
        toxic,
        10,
        observed_mean_max=float(sim_rand.max(1).values.mean()),
        observed_mean=float(sim_rand.mean()),
        n_draws=500,
    )
    assert res_rand["mean_max"].p_value > 0.01
    assert abs(res_rand["mean_max"].null_mean - res["mean_max"].null_mean) < 1e-9
    empty = random_set_null(w, toxic, 0, observed_mean_max=0.0, observed_mean=0.0)
    assert empty["mean_max"].n_draws == 0
    unobserved = random_set_null(w, toxic, 10, observed_mean_max=float("nan"), observed_mean=0.0, n_draws=50)
    assert np.isnan(unobserved["mean_max"].p_value)


def test_mann_whitney_direction():
    assert mann_whitney([3, 4, 5, 6], [0, 1, 2, 1]).p_value < 0.05
    assert mann_whitney([0, 1, 2, 1], [3, 4, 5, 6]).p_value > 0.5
