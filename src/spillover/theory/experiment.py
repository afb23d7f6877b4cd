"""The narrow fine-tuning experiment on a toy model of superposition, and its controls.

Setting (method.md section 2). The toy computes ``h = M x`` (upstream linear map, ``M = W`` after
pre-training) and reads feature j out as ``f_j = ReLU(W_jᵀ h + b_j)``. Fine-tuning on inputs where the
target feature t is active asks for ``f_t = a·x_t`` (a > 1: amplify t). Its loss gradient w.r.t. ``h`` is
``g(x) d_t`` with ``d_t = W_t/‖W_t‖``, so an SGD step changes ``M`` by ``-η Σ_x g(x) d_t xᵀ`` and every
held-out input by ``Δh(x') = -η Σ_x g(x) ⟨x, x'⟩ d_t``, also where t is inactive. Feature j's readout then
moves by ``Δf_j ≈ σ'_j(x') ‖W_j‖ cos(d_j, d_t) · (-η Σ_x g(x) ⟨x, x'⟩)``.

What is measured (``DEFINITION``): for every feature j, the mean change of its readout ``f_j`` over held-out
inputs on which t is inactive and j is active (its typical activation; x_j ~ U[0, 1], other features
drawn from the training distribution). The comparison uses features with ``‖W_j‖ >= threshold``
(represented) and ``j != t``. The predictor is ``‖W_j‖ cos(d_j, d_t)`` (the derivation's ``c_j cos``);
the analytic first-order prediction multiplies it by ``-k η Σ_x g(x) E[σ'_j ⟨x, x'⟩]`` (k steps, no fit).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from spillover.theory.toy import ToyModel, sample_features

logger = logging.getLogger(__name__)

__all__ = [
    "DEFINITION",
    "ToyFinetuneConfig",
    "FinetunedWeights",
    "ToySpillover",
    "FitStats",
    "finetune_toy",
    "measure_toy_spillover",
    "fit_stats",
    "random_direction_control",
    "analytic_r2",
    "RandomDirectionControl",
]

DEFINITION = (
    "Delta f_j = mean over held-out inputs x' with x'_t = 0 and feature j active (x'_j ~ U[0,1], others from "
    "the training distribution) of ReLU(W_j^T h(x') + b_j) after fine-tuning minus before; target feature t's "
    "own Delta f_t is the same on inputs where t is active. Fine-tuning: full-batch steps on inputs where t is "
    "active, loss asks f_t = a*x_t; in the default 'upstream' mode only the map h = M x (init W) is trained and "
    "the readout W, b stays frozen (see config.finetune for mode/loss/optimizer). Compared over represented "
    "features (||W_j|| >= threshold), j != t, with the predictor ||W_j|| cos(d_j, d_t) (d = unit column of W); 'relative' spillover is Delta f_j / Delta f_t."
)


@dataclass(frozen=True)
class ToyFinetuneConfig:
    """How the toy is fine-tuned on narrow (target-active) data and how spillover is measured."""

    mode: Literal["upstream", "tied"] = "upstream"
    """``upstream``: train only the encoder map ``M`` (init ``W``), readout ``W, b`` frozen, as in the
    derivation. ``tied``: train the tied ``W`` and ``b`` like the pre-training did (readouts move too)."""
    loss: Literal["target", "full"] = "target"
    """``target``: squared error on feature t's output only. ``full``: importance-free reconstruction of
    every feature, with t's label amplified (other outputs are asked to stay put)."""
    amplification: float = 2.0
    """Label for the target output is ``amplification * x_t``."""
    steps: int = 10
    """Full-batch optimiser steps on the narrow dataset."""
    lr: float = 0.01
    """Step size η."""
    optimizer: Literal["sgd", "adam"] = "sgd"
    """The derivation is for SGD; Adam rescales each coordinate."""
    n_narrow: int = 1024
    """Narrow (target-active) training inputs."""
    n_heldout: int = 2048
    """Held-out inputs per feature for measuring Δf_j."""
    threshold: float = 0.5
    """Features with ‖W_j‖ below this are not represented and are left out of the fit."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0:
            raise ValueError(f"need steps >= 1 and lr > 0, got steps={self.steps}, lr={self.lr}")
        if self.n_narrow < 1 or self.n_heldout < 1:
            raise ValueError(f"n_narrow and n_heldout must be >= 1, got {self.n_narrow}, {self.n_heldout}")
        if self.mode not in ("upstream", "tied"):
            raise ValueError(f"mode must be 'upstream' or 'tied', got {self.mode!r}")
        if self.loss not in ("target", "full"):
            raise ValueError(f"loss must be 'target' or 'full', got {self.loss!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")


class FinetunedWeights(NamedTuple):
    """Toy weights after fine-tuning: ``f = ReLU((x @ encoder_DN.T) @ readout_DN + bias_N)``."""

    encoder_DN: Tensor
    readout_DN: Tensor
    bias_N: Tensor

    def readout(self, x_BN: Tensor) -> Tensor:
        """Feature readouts ``f``, shape (batch, n)."""
        return _readout(x_BN, self.encoder_DN, self.readout_DN, self.bias_N)


def _readout(x_BN: Tensor, encoder_DN: Tensor, readout_DN: Tensor, bias_N: Tensor) -> Tensor:
    return torch.relu((x_BN @ encoder_DN.T) @ readout_DN + bias_N)


def _loss(f_BN: Tensor, x_BN: Tensor, target: int, cfg: ToyFinetuneConfig) -> Tensor:
    label = x_BN.clone()
    label[:, target] = cfg.amplification * x_BN[:, target]
    if cfg.loss == "target":
        return ((f_BN[:, target] - label[:, target]) ** 2).mean()
    return ((f_BN - label) ** 2).sum(-1).mean()


def finetune_toy(
    model: ToyModel, target: int, x_narrow_BN: Tensor, cfg: ToyFinetuneConfig
) -> FinetunedWeights:
    """Fine-tune a copy of the toy's weights on narrow data (the model itself is not changed).

    Args:
        model: pre-trained toy.
        target: index of the feature whose output is amplified.
        x_narrow_BN: (batch, n) narrow inputs (t active), used as one full batch per step.
        cfg: mode, loss, optimiser, steps and step size.

    Returns:
        The fine-tuned encoder, readout and bias.
    """
    w0, b0 = model.W.detach(), model.b.detach()
    if cfg.mode == "upstream":
        enc = w0.clone().requires_grad_(True)
        dec, bias = w0, b0
        params = [enc]
    else:
        enc = w0.clone().requires_grad_(True)
        dec, bias = enc, b0.clone().requires_grad_(True)
        params = [enc, bias]
    opt: torch.optim.Optimizer
    opt = (
        torch.optim.SGD(params, lr=cfg.lr) if cfg.optimizer == "sgd" else torch.optim.Adam(params, lr=cfg.lr)
    )
    for _ in range(cfg.steps):
        loss = _loss(_readout(x_narrow_BN, enc, dec, bias), x_narrow_BN, target, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    enc = enc.detach()
    return FinetunedWeights(enc, enc if cfg.mode == "tied" else dec, bias.detach())


def _heldout_readouts(x_base_MN: Tensor, v_MN: Tensor, w: FinetunedWeights) -> tuple[Tensor, Tensor]:
    """Feature j's pre-activation and readout on ``x_base`` with column j replaced by ``v[:, j]``.

    Returns:
        pre_NM, f_NM: row j holds feature j's value on its own held-out set.
    """
    h_MD = x_base_MN @ w.encoder_DN.T
    # h for the j-th set differs from h_base only along encoder column j.
    shift_NM = (v_MN - x_base_MN).T
    h_NMD = h_MD[None] + shift_NM[:, :, None] * w.encoder_DN.T[:, None, :]
    pre_NM = torch.einsum("jmd,dj->jm", h_NMD, w.readout_DN) + w.bias_N[:, None]
    return pre_NM, torch.relu(pre_NM)


@dataclass(frozen=True)
class ToySpillover:
    """One fine-tuning run on one target: measured and predicted spillover per feature.

    All arrays have length n (one entry per feature; entry ``target`` is the target itself).
    """

    target: int
    measured: np.ndarray
    """Δf_j as in ``DEFINITION``."""
    measured_preact: np.ndarray
    """The same mean change of the pre-activation ``W_jᵀ h + b_j`` (no ReLU gating)."""
    predicted: np.ndarray
    """Analytic first-order prediction ``-k η ‖W_j‖ cos(d_j, d_t) Σ_x g(x) E[σ'_j ⟨x, x'⟩]``, no fit."""
    cos: np.ndarray
    """cos(d_j, d_t) with the pre-trained directions."""
    norms: np.ndarray
    """‖W_j‖ (the derivation's c_j)."""
    used: np.ndarray
    """Boolean: represented and not the target; the features every statistic is computed over."""
    delta_target: float
    """Δf_t on inputs where t is active."""

    @property
    def predictor(self) -> np.ndarray:
        """``‖W_j‖ cos(d_j, d_t)``, the quantity the derivation says Δf_j is proportional to."""
        return self.norms * self.cos

    @property
    def relative(self) -> np.ndarray:
        """Δf_j / Δf_t."""
        return (
            self.measured / self.delta_target
            if self.delta_target != 0
            else np.full_like(self.measured, np.nan)
        )


def measure_toy_spillover(
    model: ToyModel,
    target: int,
    cfg: ToyFinetuneConfig,
    p_active: float,
    generator: torch.Generator,
) -> ToySpillover:
    """Fine-tune on narrow data for ``target`` and measure every feature's readout change (see ``DEFINITION``).

    Args:
        model: pre-trained toy (unchanged).
        target: feature to amplify.
        cfg: fine-tuning and measurement settings.
        p_active: activation probability of the data distribution (as in pre-training).
        generator: RNG for the narrow and held-out data.

    Returns:
        Measured, predicted, cosines and norms per feature.
    """
    n = model.n_features
    if not 0 <= target < n:
        raise ValueError(f"target must be a feature index in [0, {n}), got {target}")
    x_narrow = sample_features(cfg.n_narrow, n, p_active, generator, active=target)
    x_base = sample_features(cfg.n_heldout, n, p_active, generator, inactive=target)
    v = torch.rand(cfg.n_heldout, n, generator=generator)

    w0 = model.W.detach()
    base = FinetunedWeights(w0, w0, model.b.detach())
    tuned = finetune_toy(model, target, x_narrow, cfg)
    pre0, f0 = _heldout_readouts(x_base, v, base)
    pre1, f1 = _heldout_readouts(x_base, v, tuned)
    measured = (f1 - f0).mean(1)
    measured_pre = (pre1 - pre0).mean(1)

    # g(x) = d_tᵀ ∂L/∂h(x) on the base model: the part of the gradient the derivation keeps.
    norms = w0.norm(dim=0)
    d_t = w0[:, target] / norms[target].clamp_min(1e-12)
    h = (x_narrow @ w0.T).requires_grad_(True)
    loss = _loss(torch.relu(h @ w0 + base.bias_N), x_narrow, target, cfg)
    (grad_h,) = torch.autograd.grad(loss, h)
    g = grad_h @ d_t
    u_N = g @ x_narrow  # Σ_x g(x) x, so Σ_x g(x) ⟨x, x'⟩ = ⟨u, x'⟩
    overlap_NM = (x_base @ u_N)[None, :] + (v - x_base).T * u_N[:, None]
    gate_NM = (pre0 > 0).float()
    cos = (w0.T @ d_t) / norms.clamp_min(1e-12)
    predicted = -cfg.steps * cfg.lr * norms * cos * (gate_NM * overlap_NM).mean(1)

    used = (norms >= cfg.threshold).clone()
    used[target] = False
    return ToySpillover(
        target=target,
        measured=measured.numpy().astype(np.float64),
        measured_preact=measured_pre.numpy().astype(np.float64),
        predicted=predicted.detach().numpy().astype(np.float64),
        cos=cos.numpy().astype(np.float64),
        norms=norms.numpy().astype(np.float64),
        used=used.numpy(),
        delta_target=float(measured[target]),
    )


class FitStats(NamedTuple):
    """How well a predictor explains measured spillover across features."""

    pearson_r: float
    spearman_r: float
    slope: float
    """OLS slope of measured on predictor (with intercept): the fitted α."""
    intercept: float
    r2: float
    """Share of variance explained by the OLS fit (= pearson_r²)."""
    n: int


def fit_stats(measured: np.ndarray, predictor: np.ndarray) -> FitStats:
    """Pearson, Spearman and the OLS fit of ``measured ≈ slope * predictor + intercept``.

    Returns NaN statistics when there are fewer than 3 points or either side has no variance.
    """
    y, x = np.asarray(measured, dtype=np.float64), np.asarray(predictor, dtype=np.float64)
    n = int(y.size)
    if n < 3 or np.std(x) < 1e-12 or np.std(y) < 1e-15:
        nan = float("nan")
        return FitStats(nan, nan, nan, nan, nan, n)
    pr = float(stats.pearsonr(x, y)[0])
    sr = float(stats.spearmanr(x, y)[0])
    slope, intercept = np.polyfit(x, y, 1)
    return FitStats(pr, sr, float(slope), float(intercept), pr * pr, n)


def analytic_r2(measured: np.ndarray, predicted: np.ndarray) -> float:
    """``1 - SS_res/SS_tot`` of the unfitted analytic prediction (can be negative)."""
    y, p = np.asarray(measured), np.asarray(predicted)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - p) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


class RandomDirectionControl(NamedTuple):
    """Pearson r of measured spillover with ``‖W_j‖ cos(d_j, r)`` for random unit directions r."""

    mean_r: float
    """Mean r over draws (symmetric draws: expected 0)."""
    mean_abs_r: float
    """Mean |r| over draws."""
    mean_abs_r_orthogonal: float
    """Mean |r| when r is drawn orthogonal to d_t."""
    wrong_target_mean_abs_r: float
    """Mean |r| when another represented feature's direction stands in for d_t."""


def random_direction_control(
    model: ToyModel, result: ToySpillover, n_draws: int, generator: torch.Generator
) -> RandomDirectionControl:
    """Replace d_t by random unit directions (and by other features' directions) and refit.

    Args:
        model: the pre-trained toy that ``result`` was measured on.
        result: a spillover measurement.
        n_draws: number of random directions.
        generator: RNG.

    Returns:
        Mean r and mean |r| of the stand-in predictors.
    """
    w0 = model.W.detach().double()
    d = w0.shape[0]
    used = result.used
    y = result.measured[used]
    d_t = w0[:, result.target] / w0[:, result.target].norm()
    rs: list[float] = []
    rs_orth: list[float] = []
    for _ in range(n_draws):
        r = torch.randn(d, generator=generator).double()
        r_orth = r - (r @ d_t) * d_t
        for vec, out in ((r, rs), (r_orth, rs_orth)):
            if float(vec.norm()) < 1e-9:
                continue
            pred = (w0.T @ (vec / vec.norm())).numpy()[used]
            out.append(fit_stats(y, pred).pearson_r)
    wrong: list[float] = []
    for s in np.flatnonzero(used):
        pred = (w0.T @ (w0[:, s] / w0[:, s].norm())).numpy()[used]
        keep = np.arange(used.sum()) != int(np.flatnonzero(np.flatnonzero(used) == s)[0])
        wrong.append(fit_stats(y[keep], pred[keep]).pearson_r)

    def _mean(xs: list[float], absolute: bool) -> float:
        arr = np.array([abs(x) if absolute else x for x in xs if not math.isnan(x)])
        return float(arr.mean()) if arr.size else float("nan")

    return RandomDirectionControl(
        mean_r=_mean(rs, False),
        mean_abs_r=_mean(rs, True),
        mean_abs_r_orthogonal=_mean(rs_orth, True),
        wrong_target_mean_abs_r=_mean(wrong, True),
    )
