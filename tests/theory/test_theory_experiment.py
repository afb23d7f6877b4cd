from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spillover.theory.experiment import (
    ToyFinetuneConfig,
    finetune_toy,
    fit_stats,
    measure_toy_spillover,
    random_direction_control,
)
from spillover.theory.toy import ToyConfig, ToyModel, train_toy

ANGLES = [0.0, 70.0, 200.0]  # three features in two dimensions


def _hand_built(w_DN: torch.Tensor) -> ToyModel:
    model = ToyModel(w_DN.shape[1], w_DN.shape[0])
    with torch.no_grad():
        model.W.copy_(w_DN)
        model.b.zero_()
    return model


def _planar(angles_deg: list[float]) -> ToyModel:
    rad = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return _hand_built(torch.stack([torch.cos(rad), torch.sin(rad)]).float())


@pytest.fixture(scope="module")
def trained() -> ToyModel:
    return train_toy(
        ToyConfig(n_features=12, d_hidden=4, p_active=0.05, steps=800, lr=1e-2, batch_size=512)
    ).model


def test_one_sgd_step_matches_closed_form_in_2d_superposition():
    model = _planar(ANGLES)
    eta, a = 0.01, 2.0
    x = torch.tensor([[1.0, 0.0, 0.5]])  # target 0 active, feature 2 co-active
    cfg = ToyFinetuneConfig(steps=1, lr=eta, amplification=a, n_narrow=1)
    tuned = finetune_toy(model, 0, x, cfg)

    c = {j: math.cos(math.radians(ANGLES[j] - ANGLES[0])) for j in range(3)}
    f_t = 1.0 + 0.5 * c[2]  # d_0 · (d_0 + 0.5 d_2)
    g = 2 * (f_t - a)  # dL/df_t; dL/dh = g d_0 since ‖W_0‖ = 1
    # ΔM = -η g d_0 xᵀ, so Δf_j(x') = -η g ⟨x, x'⟩ cos(d_j, d_0) while the ReLU stays open.
    x1 = torch.tensor([[0.0, 1.0, 0.4]])  # feature 1 active, t inactive, ⟨x, x1⟩ = 0.2
    x2 = torch.tensor([[0.0, 0.3, 1.0]])  # feature 2 active, t inactive, ⟨x, x2⟩ = 0.5
    base = finetune_toy(model, 0, x, ToyFinetuneConfig(steps=1, lr=1e-30, n_narrow=1))
    d1 = float(tuned.readout(x1)[0, 1] - base.readout(x1)[0, 1])
    d2 = float(tuned.readout(x2)[0, 2] - base.readout(x2)[0, 2])
    assert d1 == pytest.approx(-eta * g * 0.2 * c[1], rel=1e-4)
    assert d2 == pytest.approx(-eta * g * 0.5 * c[2], rel=1e-4)
    assert d1 > 0 > d2  # cos 70° > 0 is amplified, cos 200° < 0 is suppressed


def test_upstream_update_stays_rank_one_along_the_target_direction():
    model = _planar(ANGLES)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, generator=gen) * (torch.rand(64, 3, generator=gen) < 0.5)
    x[:, 1] = torch.rand(64, generator=gen)
    tuned = finetune_toy(model, 1, x, ToyFinetuneConfig(steps=50, lr=0.1))
    delta = tuned.encoder_DN - model.W.detach()
    u, s, _ = torch.linalg.svd(delta.double())
    d_t = model.W.detach()[:, 1].double() / model.W.detach()[:, 1].norm()
    assert float(s[0]) > 1e-3
    assert float(s[1] / s[0]) < 1e-5
    assert abs(float(u[:, 0] @ d_t)) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(tuned.readout_DN, model.W.detach())  # readout frozen


def test_no_shared_input_means_no_spillover_even_in_superposition():
    model = _planar(ANGLES)
    x = torch.tensor([[1.0, 0.0, 0.0]])  # only the target is active in the narrow data
    tuned = finetune_toy(model, 0, x, ToyFinetuneConfig(steps=5, lr=0.1, n_narrow=1))
    held_out = torch.tensor([[0.0, 0.8, 0.0], [0.0, 0.0, 0.6], [0.0, 0.5, 0.5]])
    before = _hand_built(model.W.detach()).forward(held_out)
    assert torch.allclose(tuned.readout(held_out), before, atol=1e-7)


def test_measured_spillover_equals_first_order_prediction_for_a_small_step():
    model = _planar(ANGLES)
    cfg = ToyFinetuneConfig(steps=1, lr=1e-3, n_narrow=4096, n_heldout=4096)
    res = measure_toy_spillover(model, 0, cfg, 0.3, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(res.measured, res.predicted, rtol=2e-2, atol=1e-7)
    assert res.delta_target > 0
    assert np.sign(res.measured[1]) == np.sign(math.cos(math.radians(70)))
    assert np.sign(res.measured[2]) == np.sign(math.cos(math.radians(200)))


def test_orthogonal_features_get_no_spillover():
    model = _hand_built(torch.eye(3))
    res = measure_toy_spillover(
        model, 1, ToyFinetuneConfig(steps=10, lr=0.05), 0.3, torch.Generator().manual_seed(0)
    )
    assert res.delta_target > 1e-3
    assert np.abs(res.measured[[0, 2]]).max() < 1e-6


def test_spillover_tracks_cosine_on_a_trained_toy_and_flips_with_suppression(trained: ToyModel):
    gen = torch.Generator().manual_seed(0)
    for target in (0, 5):
        amp = measure_toy_spillover(trained, target, ToyFinetuneConfig(), 0.05, gen)
        sup = measure_toy_spillover(trained, target, ToyFinetuneConfig(amplification=0.0), 0.05, gen)
        u = amp.used
        assert u.sum() >= 8
        assert fit_stats(amp.measured[u], amp.predictor[u]).pearson_r > 0.9
        assert amp.delta_target > 0 > sup.delta_target
        assert fit_stats(sup.measured[u], sup.predictor[u]).pearson_r < -0.9


def test_random_directions_predict_nothing(trained: ToyModel):
    gen = torch.Generator().manual_seed(1)
    res = measure_toy_spillover(trained, 3, ToyFinetuneConfig(), 0.05, gen)
    true_r = fit_stats(res.measured[res.used], res.predictor[res.used]).pearson_r
    ctl = random_direction_control(trained, res, 300, gen)
    assert true_r > 0.9
    assert abs(ctl.mean_r) < 0.15
    assert ctl.mean_abs_r < 0.6 * true_r
    assert ctl.mean_abs_r_orthogonal < ctl.mean_abs_r
    assert ctl.wrong_target_mean_abs_r < true_r


def test_fit_stats_recovers_a_known_line_and_refuses_degenerate_input():
    x = np.linspace(-1, 1, 20)
    fit = fit_stats(3 * x + 0.5, x)
    assert fit.pearson_r == pytest.approx(1.0)
    assert fit.spearman_r == pytest.approx(1.0)
    assert fit.slope == pytest.approx(3.0)
    assert fit.intercept == pytest.approx(0.5)
    assert math.isnan(fit_stats(x, np.zeros(20)).pearson_r)


def test_finetune_config_rejects_bad_values():
    with pytest.raises(ValueError, match="steps"):
        ToyFinetuneConfig(steps=0)
    with pytest.raises(ValueError, match="mode"):
        ToyFinetuneConfig(mode="lora")  # type: ignore[arg-type]
