"""The full toy experiment: several seeds and targets, the controls, step scaling, variants and a sweep.

Run it (writes theory.json and theory.png)::

    spillover theory --out runs/theory            # full
    spillover theory --quick --out /tmp/theory    # < 1 min on 2 cores

or in Python: ``results = run_theory(TheoryConfig())``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import torch

from spillover.config import to_dict
from spillover.progress import track
from spillover.theory.experiment import (
    DEFINITION,
    ToyFinetuneConfig,
    ToySpillover,
    analytic_r2,
    fit_stats,
    measure_toy_spillover,
    random_direction_control,
)
from spillover.theory.toy import ToyConfig, ToyModel, toy_geometry, train_toy

logger = logging.getLogger(__name__)

__all__ = ["HEADLINE_KEYS", "TheoryConfig", "VARIANTS", "run_theory"]

VARIANTS: dict[str, tuple[str, str, str]] = {
    "upstream/target/sgd": ("upstream", "target", "sgd"),
    "upstream/full/sgd": ("upstream", "full", "sgd"),
    "tied/target/sgd": ("tied", "target", "sgd"),
    "tied/full/sgd": ("tied", "full", "sgd"),
    "upstream/target/adam": ("upstream", "target", "adam"),
}
"""Fine-tuning variants (mode/loss/optimizer) compared against the derivation's setting (the first)."""


@dataclass(frozen=True)
class TheoryConfig:
    """Everything ``run_theory`` does; ``TheoryConfig.quick()`` is the < 1 minute version."""

    toy: ToyConfig = field(default_factory=ToyConfig)
    """The superposition toy (its seed is replaced by each of ``seeds``)."""
    finetune: ToyFinetuneConfig = field(default_factory=ToyFinetuneConfig)
    """The narrow fine-tuning and measurement (the derivation's setting by default)."""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """One pre-trained toy per seed."""
    n_targets: int = 6
    """Target features per seed, drawn at random among the represented ones."""
    random_draws: int = 100
    """Random directions per target for the random-direction control."""
    step_lrs: tuple[float, ...] = (0.01, 0.1, 1.0)
    """Step sizes for the first-order-vs-measured scaling study (seed ``seeds[0]``)."""
    step_counts: tuple[int, ...] = (1, 10, 100)
    """Step counts for the scaling study."""
    variants: tuple[str, ...] = tuple(VARIANTS)
    """Fine-tuning variants to compare (keys of ``VARIANTS``)."""
    variant_lr_adam: float = 0.003
    """Adam step size for the Adam variant (SGD's would be far too large for Adam)."""
    sweep_p: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
    """Feature probabilities for the sparsity sweep."""
    sweep_ratio: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    """n/d ratios for the sweep (d = ``toy.d_hidden``)."""
    sweep_seeds: tuple[int, ...] = (0,)
    """Seeds per sweep cell."""
    sweep_targets: int = 4
    """Targets per sweep cell."""

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must name at least one seed, e.g. (0, 1, 2)")
        if self.n_targets < 1 or self.sweep_targets < 1:
            raise ValueError(
                f"n_targets and sweep_targets must be >= 1, got {self.n_targets}, {self.sweep_targets}"
            )
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; valid: {list(VARIANTS)}")
        if any(r <= 0 for r in self.sweep_ratio) or any(not 0 < p <= 1 for p in self.sweep_p):
            raise ValueError(
                f"sweep_ratio must be > 0 and sweep_p in (0, 1]; got {self.sweep_ratio}, {self.sweep_p}"
            )
        # Checked here, not when the step-scaling and variant runs start after every seed has run.
        if any(lr <= 0 for lr in self.step_lrs) or any(k < 1 for k in self.step_counts):
            raise ValueError(
                f"step_lrs must be > 0 and step_counts >= 1; got {self.step_lrs}, {self.step_counts}"
            )
        if self.variant_lr_adam <= 0 or self.random_draws < 1:
            raise ValueError(
                f"variant_lr_adam must be > 0 and random_draws >= 1; got {self.variant_lr_adam}, {self.random_draws}"
            )

    @classmethod
    def quick(cls) -> TheoryConfig:
        """Three seeds, fewer targets, a 2 x 2 sweep and shorter pre-training: < 1 minute on 2 cores."""
        return cls(
            toy=ToyConfig(steps=1500),
            seeds=(0, 1, 2),
            n_targets=4,
            random_draws=50,
            step_lrs=(0.01, 1.0),
            step_counts=(1, 100),
            sweep_p=(0.03, 1.0),
            sweep_ratio=(1.0, 4.0),
            sweep_targets=3,
        )


def _nanmean(xs: Sequence[float]) -> float:
    arr = np.array([x for x in xs if x is not None and not math.isnan(x)], dtype=np.float64)
    return float(arr.mean()) if arr.size else float("nan")


def _pick_targets(model: ToyModel, k: int, threshold: float, seed: int) -> list[int]:
    norms = model.W.detach().norm(dim=0)
    rep = torch.nonzero(norms >= threshold).flatten()
    if rep.numel() == 0:
        return []
    perm = torch.randperm(rep.numel(), generator=torch.Generator().manual_seed(10_000 + seed))
    return sorted(int(i) for i in rep[perm[:k]])


def _summary(r: ToySpillover) -> dict[str, Any]:
    u = r.used
    fit = fit_stats(r.measured[u], r.predictor[u])
    fit_cos = fit_stats(r.measured[u], r.cos[u])
    fit_rel = fit_stats(r.relative[u], r.predictor[u])
    fit_an = fit_stats(r.measured[u], r.predicted[u])
    rel = np.abs(r.relative[u])
    return {
        "target": r.target,
        "n_features": fit.n,
        "pearson_r": fit.pearson_r,
        "spearman_r": fit.spearman_r,
        "slope": fit.slope,
        "intercept": fit.intercept,
        "r2": fit.r2,
        "pearson_r_cos_only": fit_cos.pearson_r,
        "slope_relative": fit_rel.slope,
        "analytic_slope": fit_an.slope,
        "analytic_pearson_r": fit_an.pearson_r,
        "analytic_spearman_r": fit_an.spearman_r,
        "analytic_r2": analytic_r2(r.measured[u], r.predicted[u]),
        "pearson_r_preact": fit_stats(r.measured_preact[u], r.predictor[u]).pearson_r,
        "delta_target": r.delta_target,
        "mean_abs_relative": float(rel.mean()) if rel.size else float("nan"),
        "max_abs_relative": float(rel.max()) if rel.size else float("nan"),
    }


def _measure_all(
    model: ToyModel, targets: Sequence[int], cfg: ToyFinetuneConfig, p: float, seed: int
) -> list[ToySpillover]:
    gen = torch.Generator().manual_seed(20_000 + seed)
    return [measure_toy_spillover(model, t, cfg, p, gen) for t in targets]


def _mean_keys(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    return {k: _nanmean([row[k] for row in rows]) for k in keys}


HEADLINE_KEYS = (
    "pearson_r",
    "spearman_r",
    "slope",
    "r2",
    "pearson_r_cos_only",
    "slope_relative",
    "analytic_slope",
    "analytic_r2",
    "pearson_r_preact",
)
"""The pooled fit statistics ``run_theory`` reports at the top level of its results."""

_MEAN_KEYS = (
    "pearson_r",
    "spearman_r",
    "slope",
    "r2",
    "pearson_r_cos_only",
    "slope_relative",
    "analytic_slope",
    "analytic_pearson_r",
    "analytic_r2",
    "pearson_r_preact",
    "mean_abs_relative",
    "max_abs_relative",
    "delta_target",
)


class _SeedRun(NamedTuple):
    """One seed: its toy and targets, its rows with and without superposition, its controls and points."""

    model: ToyModel
    targets: list[int]
    row: dict[str, Any]
    ortho_row: dict[str, Any]
    controls: list[Any]
    points: dict[str, list[float]]
    ortho_points: dict[str, list[float]]


def _points(results: Sequence[ToySpillover]) -> dict[str, list[float]]:
    """The plotted values of every used (represented, non-target) feature."""
    out: dict[str, list[float]] = {k: [] for k in ("predictor", "measured", "predicted", "relative")}
    for r in results:
        u = r.used
        out["predictor"] += r.predictor[u].tolist()
        out["measured"] += r.measured[u].tolist()
        out["predicted"] += r.predicted[u].tolist()
        out["relative"] += r.relative[u].tolist()
    return out


def _run_seed(cfg: TheoryConfig, seed: int) -> _SeedRun:
    """Train the toy of one seed, measure its targets with the random-direction control, and repeat the
    measurement on the control toy without superposition (n = d, features orthogonal)."""
    ft, p = cfg.finetune, cfg.toy.p_active
    toy = train_toy(replace(cfg.toy, seed=seed))
    targets = _pick_targets(toy.model, cfg.n_targets, ft.threshold, seed)
    measured = _measure_all(toy.model, targets, ft, p, seed)
    rows = [_summary(r) for r in measured]
    gen = torch.Generator().manual_seed(30_000 + seed)
    controls = [random_direction_control(toy.model, r, cfg.random_draws, gen) for r in measured]
    points = _points(measured)
    points["seed"] = [float(seed)] * len(points["measured"])
    row = {
        "seed": seed,
        "final_loss": toy.final_loss,
        "geometry": to_dict(toy_geometry(toy.model, ft.threshold)),
        **_mean_keys(rows, _MEAN_KEYS),
        "targets": rows,
    }
    ortho = train_toy(replace(cfg.toy, n_features=cfg.toy.d_hidden, seed=seed))
    o_targets = _pick_targets(ortho.model, cfg.n_targets, ft.threshold, seed)
    o_results = _measure_all(ortho.model, o_targets, ft, p, seed)
    o_rows = [_summary(r) for r in o_results]
    ortho_row = {
        "seed": seed,
        "geometry": to_dict(toy_geometry(ortho.model, ft.threshold)),
        **_mean_keys(o_rows, _MEAN_KEYS),
        "targets": o_rows,
    }
    return _SeedRun(toy.model, targets, row, ortho_row, controls, points, _points(o_results))


def _headline(runs: Sequence[_SeedRun], cfg: TheoryConfig) -> dict[str, Any]:
    """The pooled numbers over all seeds and targets, the two controls, and the points to plot."""
    per_seed = [run.row for run in runs]
    ortho_seed = [run.ortho_row for run in runs]
    points = {
        k: [v for run in runs for v in run.points[k]]
        for k in ("predictor", "measured", "predicted", "relative", "seed")
    }
    ortho_points = {
        k: [v for run in runs for v in run.ortho_points[k]]
        for k in ("predictor", "measured", "predicted", "relative")
    }
    controls = [c for run in runs for c in run.controls]
    all_rows = [row for s in per_seed for row in s["targets"]]
    all_ortho = [row for s in ortho_seed for row in s["targets"]]
    headline = _mean_keys(all_rows, _MEAN_KEYS)
    typical = headline["mean_abs_relative"]
    ortho_max = max((row["max_abs_relative"] for row in all_ortho), default=float("nan"))
    ortho_raw = float(np.max(np.abs(ortho_points["measured"]))) if ortho_points["measured"] else float("nan")
    typical_raw = float(np.mean(np.abs(points["measured"]))) if points["measured"] else float("nan")
    results: dict[str, Any] = {
        "definition": DEFINITION,
        **{k: headline[k] for k in HEADLINE_KEYS},
        "typical_abs_spillover": typical,
        "typical_abs_spillover_raw": typical_raw,
        "control_orthogonal_max_abs_spillover": ortho_max,
        "control_orthogonal_max_abs_spillover_raw": ortho_raw,
        "control_orthogonal_ratio": typical / ortho_max if ortho_max > 0 else float("inf"),
        "control_random_direction_r": _nanmean([c.mean_r for c in controls]),
        "control_random_direction_abs_r": _nanmean([c.mean_abs_r for c in controls]),
        "control_random_orthogonal_abs_r": _nanmean([c.mean_abs_r_orthogonal for c in controls]),
        "control_wrong_target_abs_r": _nanmean([c.wrong_target_mean_abs_r for c in controls]),
        "n_seeds": len(cfg.seeds),
        "n_targets_total": len(all_rows),
        "per_seed": per_seed,
        "control_orthogonal": {"per_seed": ortho_seed, **_mean_keys(all_ortho, _MEAN_KEYS)},
        "points": points,
        "orthogonal_points": ortho_points,
    }
    results["criteria"] = {
        "pearson_r_at_least_0.9": bool(results["pearson_r"] >= 0.9),
        "orthogonal_at_least_10x_smaller": bool(results["control_orthogonal_ratio"] >= 10),
    }
    return results


def run_theory(cfg: TheoryConfig) -> dict[str, Any]:
    """Run the toy spillover experiment with its controls and return JSON-ready results.

    Args:
        cfg: the experiment configuration.

    Returns:
        A dict with the headline numbers (``pearson_r``, ``spearman_r``, ``slope``,
        ``control_orthogonal_max_abs_spillover``, ``control_random_direction_r``, ...), per-seed and
        per-target values, geometry reports, step scaling, variants, the sweep and the points to plot.
    """
    t0 = time.perf_counter()
    runs = [_run_seed(cfg, seed) for seed in track(cfg.seeds, "theory: seeds")]
    results = _headline(runs, cfg)
    models = {seed: run.model for seed, run in zip(cfg.seeds, runs, strict=True)}
    targets_by_seed = {seed: run.targets for seed, run in zip(cfg.seeds, runs, strict=True)}
    seed0 = cfg.seeds[0]
    results["step_scaling"] = _step_scaling(models[seed0], targets_by_seed[seed0], cfg, seed0)
    results["variants"] = _variants(models, targets_by_seed, cfg)
    results["sweep"] = _sweep(cfg)
    results["config"] = to_dict(cfg)
    results["seconds"] = time.perf_counter() - t0
    logger.info(
        "theory: pearson r %.3f, spearman %.3f, orthogonal ratio %.1f, random-direction r %.3f (%.0f s)",
        results["pearson_r"],
        results["spearman_r"],
        results["control_orthogonal_ratio"],
        results["control_random_direction_r"],
        results["seconds"],
    )
    return results


def _step_scaling(
    model: ToyModel, targets: Sequence[int], cfg: TheoryConfig, seed: int
) -> list[dict[str, Any]]:
    """How the first-order prediction holds up as the step size and the number of steps grow."""
    out = []
    for lr in cfg.step_lrs:
        for steps in cfg.step_counts:
            ft = replace(cfg.finetune, lr=lr, steps=steps)
            rows = [_summary(r) for r in _measure_all(model, targets, ft, cfg.toy.p_active, seed)]
            out.append({"lr": lr, "steps": steps, "lr_x_steps": lr * steps, **_mean_keys(rows, _MEAN_KEYS)})
    return out


def _variants(
    models: dict[int, ToyModel], targets_by_seed: dict[int, list[int]], cfg: TheoryConfig
) -> list[dict[str, Any]]:
    """The same measurement when fine-tuning departs from the derivation's setting."""
    out = []
    for name in cfg.variants:
        mode, loss, opt = VARIANTS[name]
        lr = cfg.variant_lr_adam if opt == "adam" else cfg.finetune.lr
        ft = replace(cfg.finetune, mode=mode, loss=loss, optimizer=opt, lr=lr)  # type: ignore[arg-type]
        rows = [
            _summary(r)
            for seed, model in models.items()
            for r in _measure_all(model, targets_by_seed[seed], ft, cfg.toy.p_active, seed)
        ]
        out.append(
            {
                "name": name,
                "mode": mode,
                "loss": loss,
                "optimizer": opt,
                "lr": lr,
                **_mean_keys(rows, _MEAN_KEYS),
            }
        )
    return out


def _sweep(cfg: TheoryConfig) -> list[dict[str, Any]]:
    """Control (c): the fit across sparsity p and n/d."""
    cells = [(p, ratio, seed) for p in cfg.sweep_p for ratio in cfg.sweep_ratio for seed in cfg.sweep_seeds]
    raw: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for p, ratio, seed in track(cells, "theory: sweep"):
        n = max(1, round(ratio * cfg.toy.d_hidden))
        toy = train_toy(replace(cfg.toy, n_features=n, p_active=p, seed=seed))
        geo = toy_geometry(toy.model, cfg.finetune.threshold)
        targets = _pick_targets(toy.model, cfg.sweep_targets, cfg.finetune.threshold, seed)
        rows = [_summary(r) for r in _measure_all(toy.model, targets, cfg.finetune, p, seed)]
        raw.setdefault((p, ratio), []).append(
            {
                "n_features": n,
                "n_represented": geo.n_represented,
                "dims_per_feature": geo.dims_per_feature,
                "mean_abs_cos": geo.mean_abs_cos,
                **_mean_keys(rows, _MEAN_KEYS),
            }
        )
    out = []
    for (p, ratio), cell in raw.items():
        keys = ("n_represented", "dims_per_feature", "mean_abs_cos", *_MEAN_KEYS)
        out.append(
            {
                "p_active": p,
                "n_over_d": ratio,
                "n_features": cell[0]["n_features"],
                "d_hidden": cfg.toy.d_hidden,
            }
            | _mean_keys(cell, keys)
        )
    return out
