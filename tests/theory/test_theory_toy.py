from __future__ import annotations

import math

import pytest
import torch

from spillover.theory.toy import ToyConfig, ToyModel, sample_features, toy_geometry, train_toy


def _hand_built(angles_deg: list[float], norms: list[float] | None = None) -> ToyModel:
    model = ToyModel(len(angles_deg), 2)
    rad = torch.tensor(angles_deg) * math.pi / 180
    w = torch.stack([torch.cos(rad), torch.sin(rad)])
    if norms is not None:
        w = w * torch.tensor(norms)
    with torch.no_grad():
        model.W.copy_(w)
    return model


def test_sample_features_respects_probability_and_forced_features():
    gen = torch.Generator().manual_seed(0)
    x = sample_features(20_000, 6, 0.1, gen, active=2, inactive=4)
    assert bool((x[:, 2] > 0).all())
    assert bool((x[:, 4] == 0).all())
    rate = (x[:, [0, 1, 3, 5]] > 0).float().mean()
    assert abs(float(rate) - 0.1) < 0.01
    assert float(x.max()) <= 1.0


def test_geometry_of_three_features_at_120_degrees():
    geo = toy_geometry(_hand_built([0, 120, 240]))
    assert geo.n_represented == 3
    assert geo.cos_quantiles == pytest.approx([-0.5] * 7, abs=1e-6)
    assert geo.dims_per_feature == pytest.approx(2 / 3)
    assert geo.max_abs_cos == pytest.approx(0.5)
    # Each feature shares its 2 dims with two others: 1 / (1 + 2 * 0.25) = 2/3 of a dimension.
    assert geo.feature_dimensionality == pytest.approx([2 / 3] * 3, abs=1e-6)


def test_geometry_leaves_unrepresented_features_out_of_cosines():
    geo = toy_geometry(_hand_built([0, 90, 45], norms=[1.0, 1.0, 0.01]))
    assert geo.n_represented == 2
    assert geo.max_abs_cos == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_features_train_into_superposition(seed: int):
    toy = train_toy(
        ToyConfig(n_features=6, d_hidden=2, p_active=0.05, steps=800, lr=1e-2, batch_size=512, seed=seed)
    )
    geo = toy_geometry(toy.model)
    assert geo.n_represented > 2  # more features than dimensions
    assert geo.cos_quantiles[0] < -0.5  # and they overlap
    assert geo.dims_per_feature < 0.5


def test_orthogonal_regime_learns_orthogonal_features():
    toy = train_toy(
        ToyConfig(n_features=4, d_hidden=4, p_active=0.05, steps=800, lr=1e-2, batch_size=512, seed=1)
    )
    geo = toy_geometry(toy.model)
    assert geo.n_represented == 4
    assert geo.max_abs_cos < 0.05


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="p_active"):
        ToyConfig(p_active=0.0)
