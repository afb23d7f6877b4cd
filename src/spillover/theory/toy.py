"""A toy model of superposition (Elhage et al. 2022), trained on CPU, and a report of its geometry.

n sparse features ``x`` (each active with probability ``p``, value uniform in [0, 1]) are compressed
into ``d < n`` dimensions by ``W`` (d x n) and reconstructed by ``ReLU(Wᵀ W x + b)``. Column ``W[:, i]``
is feature i's direction; its norm says how strongly the feature is represented.

Run (trains one toy and logs its geometry)::

    python -c "from spillover.theory.toy import *; print(toy_geometry(train_toy(ToyConfig()).model))"
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = [
    "ToyConfig",
    "ToyModel",
    "TrainedToy",
    "Geometry",
    "sample_features",
    "train_toy",
    "toy_geometry",
    "unit_directions",
]


@dataclass(frozen=True)
class ToyConfig:
    """How to build and train one toy model of superposition."""

    n_features: int = 40
    """Number of sparse input features n."""
    d_hidden: int = 10
    """Hidden dimension d; superposition needs n > d."""
    p_active: float = 0.05
    """Probability that a feature is active in a sample (1 - sparsity)."""
    importance_decay: float = 1.0
    """Importance of feature i is ``importance_decay ** i``; 1.0 weights all features equally."""
    steps: int = 3000
    """Adam steps of pre-training."""
    batch_size: int = 1024
    """Samples per pre-training step (drawn fresh every step)."""
    lr: float = 3e-3
    """Adam learning rate for pre-training (cosine-decayed to 10% by the last step)."""
    seed: int = 0
    """Seeds the weight initialisation and the data stream."""

    def __post_init__(self) -> None:
        if self.n_features < 1 or self.d_hidden < 1:
            raise ValueError(
                f"n_features and d_hidden must be >= 1, got n_features={self.n_features}, d_hidden={self.d_hidden}"
            )
        if not 0 < self.p_active <= 1:
            raise ValueError(f"p_active must be in (0, 1], got {self.p_active}")
        if not 0 < self.importance_decay <= 1:
            raise ValueError(f"importance_decay must be in (0, 1], got {self.importance_decay}")
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"need steps >= 0, batch_size >= 1, lr > 0; got {self.steps}, {self.batch_size}, {self.lr}"
            )

    @property
    def importance(self) -> Tensor:
        """Per-feature loss weights, shape (n_features,)."""
        return self.importance_decay ** torch.arange(self.n_features, dtype=torch.float32)


class ToyModel(nn.Module):
    """Tied-weight toy model: ``h = W x``, ``x̂ = ReLU(Wᵀ h + b)``.

    Attributes:
        W: (d_hidden, n_features) feature directions, one column per feature.
        b: (n_features,) readout bias.
    """

    def __init__(self, n_features: int, d_hidden: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        w = torch.empty(d_hidden, n_features)
        std = (2.0 / (n_features + d_hidden)) ** 0.5
        w.normal_(0.0, std, generator=generator)
        self.W = nn.Parameter(w)
        self.b = nn.Parameter(torch.zeros(n_features))

    @property
    def n_features(self) -> int:
        return int(self.W.shape[1])

    @property
    def d_hidden(self) -> int:
        return int(self.W.shape[0])

    def encode(self, x_BN: Tensor) -> Tensor:
        """Hidden activations ``h = W x``, shape (batch, d_hidden)."""
        return x_BN @ self.W.T

    def preact(self, h_BD: Tensor) -> Tensor:
        """Readout pre-activations ``Wᵀ h + b``, shape (batch, n_features)."""
        return h_BD @ self.W + self.b

    def forward(self, x_BN: Tensor) -> Tensor:
        """Reconstruction ``ReLU(Wᵀ W x + b)``, shape (batch, n_features)."""
        return torch.relu(self.preact(self.encode(x_BN)))


def sample_features(
    batch: int,
    n_features: int,
    p_active: float,
    generator: torch.Generator,
    *,
    active: int | None = None,
    inactive: int | None = None,
) -> Tensor:
    """Draw sparse feature vectors: each feature active w.p. ``p_active`` with value ~ U[0, 1].

    Args:
        batch: number of samples.
        n_features: n.
        p_active: activation probability.
        generator: torch RNG.
        active: if given, this feature is always active (value ~ U[0, 1]).
        inactive: if given, this feature is always zero.

    Returns:
        (batch, n_features) float tensor.
    """
    values = torch.rand(batch, n_features, generator=generator)
    on = torch.rand(batch, n_features, generator=generator) < p_active
    x = values * on
    if active is not None:
        x[:, active] = values[:, active]
    if inactive is not None:
        x[:, inactive] = 0.0
    return x


@dataclass(frozen=True)
class TrainedToy:
    """A pre-trained toy and its training record."""

    model: ToyModel
    """The trained model (parameters require grad; callers copy before fine-tuning)."""
    config: ToyConfig
    """The configuration it was trained with."""
    final_loss: float
    """Mean importance-weighted reconstruction loss over the last 100 steps."""


def train_toy(cfg: ToyConfig) -> TrainedToy:
    """Pre-train a toy model of superposition on its sparse feature distribution.

    Args:
        cfg: model size, sparsity, optimiser settings and seed.

    Returns:
        The trained model with its config and final loss.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    model = ToyModel(cfg.n_features, cfg.d_hidden, generator=gen)
    importance = cfg.importance
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.steps, 1), eta_min=cfg.lr / 10)
    recent: list[float] = []
    for _ in range(cfg.steps):
        x = sample_features(cfg.batch_size, cfg.n_features, cfg.p_active, gen)
        loss = (importance * (model(x) - x) ** 2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        recent.append(float(loss.detach()))
        if len(recent) > 100:
            recent.pop(0)
    final = sum(recent) / len(recent) if recent else float("nan")
    logger.info(
        "trained toy n=%d d=%d p=%.3g seed=%d: loss %.4g",
        cfg.n_features,
        cfg.d_hidden,
        cfg.p_active,
        cfg.seed,
        final,
    )
    return TrainedToy(model=model, config=cfg, final_loss=final)


def unit_directions(w_DN: Tensor) -> Tensor:
    """Columns of ``w_DN`` scaled to unit norm (zero columns stay zero), shape (d, n)."""
    return w_DN / w_DN.norm(dim=0, keepdim=True).clamp_min(1e-12)


@dataclass(frozen=True)
class Geometry:
    """Where the features of a toy model sit.

    Attributes:
        norms: ``‖W_i‖`` per feature, length n.
        n_represented: features with norm >= ``threshold``.
        threshold: the norm threshold used.
        dims_per_feature: ``d / ‖W‖_F²`` (Elhage et al.'s dimensions per feature; 1 = no superposition).
        feature_dimensionality: per-feature ``‖W_i‖² / Σ_j (Ŵ_i·W_j)²`` (1 = own dimension), length n.
        cos_quantiles: quantiles (0, .05, .25, .5, .75, .95, 1) of the pairwise cosines between
            represented features (off-diagonal, each pair once).
        cos_histogram: counts of those cosines in 20 bins over [-1, 1].
        mean_abs_cos: mean |cos| over represented pairs.
        max_abs_cos: max |cos| over represented pairs.
    """

    norms: list[float]
    n_represented: int
    threshold: float
    dims_per_feature: float
    feature_dimensionality: list[float]
    cos_quantiles: list[float]
    cos_histogram: list[int]
    mean_abs_cos: float
    max_abs_cos: float


def toy_geometry(model: ToyModel, threshold: float = 0.5) -> Geometry:
    """Summarise feature norms, pairwise cosines and how many features are represented.

    Args:
        model: a (trained) toy.
        threshold: norm above which a feature counts as represented.

    Returns:
        The geometry summary (plain floats, JSON-ready).
    """
    w = model.W.detach()
    norms = w.norm(dim=0)
    rep = norms >= threshold
    unit = unit_directions(w)
    overlap_NN = (unit.T @ w) ** 2
    feat_dim = norms**2 / overlap_NN.sum(dim=1).clamp_min(1e-12)
    cos_RR = unit[:, rep].T @ unit[:, rep]
    iu = torch.triu_indices(int(rep.sum()), int(rep.sum()), offset=1)
    pair = cos_RR[iu[0], iu[1]]
    qs = torch.tensor([0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    if pair.numel() > 0:
        quant = torch.quantile(pair, qs).tolist()
        hist = torch.histc(pair, bins=20, min=-1.0, max=1.0).long().tolist()
        mean_abs, max_abs = float(pair.abs().mean()), float(pair.abs().max())
    else:
        quant, hist, mean_abs, max_abs = [float("nan")] * len(qs), [0] * 20, float("nan"), float("nan")
    return Geometry(
        norms=norms.tolist(),
        n_represented=int(rep.sum()),
        threshold=threshold,
        dims_per_feature=float(model.d_hidden / (w**2).sum()),
        feature_dimensionality=feat_dim.tolist(),
        cos_quantiles=quant,
        cos_histogram=hist,
        mean_abs_cos=mean_abs,
        max_abs_cos=max_abs,
    )
