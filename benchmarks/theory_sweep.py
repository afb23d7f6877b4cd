"""Full toy spillover experiment (5 seeds x 6 targets, controls, step scaling, variants, p x n/d sweep).

    .venv/bin/python benchmarks/theory_sweep.py [--out /tmp/spillover-theory-bench]

Prints the measured numbers; writes theory.json and theory.png to --out. Also prints two checks that are
not part of ``spillover theory``: the fit on other toy shapes (to show the default toy was not picked to
agree), and which parameters drive the sign flip of the tied/full variant. Takes ~3-5 min on one core.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spillover.config import to_dict
from spillover.theory.experiment import (
    FinetunedWeights,
    ToyFinetuneConfig,
    _heldout_readouts,
    finetune_toy,
    fit_stats,
    measure_toy_spillover,
)
from spillover.theory.report import plot_theory
from spillover.theory.run import HEADLINE_KEYS, TheoryConfig, _pick_targets, run_theory
from spillover.theory.toy import ToyConfig, sample_features, toy_geometry, train_toy


def _f(x: float) -> str:
    return "nan" if x is None or x != x else f"{x:.3f}"


def _print_results(res: dict[str, Any]) -> None:
    """The numbers ``run_theory`` returned: headline, per seed, controls, step scaling, variants, sweep."""
    print(f"== headline ({res['n_seeds']} seeds, {res['n_targets_total']} targets, {res['seconds']:.0f} s)")
    for key in (
        *HEADLINE_KEYS,
        "typical_abs_spillover",
        "control_orthogonal_max_abs_spillover",
        "control_orthogonal_ratio",
        "control_random_direction_r",
        "control_random_direction_abs_r",
        "control_random_orthogonal_abs_r",
        "control_wrong_target_abs_r",
    ):
        print(f"  {key:40s} {res[key]:.4g}")
    print(f"  criteria: {res['criteria']}")
    print("== per seed: pearson / spearman / first-order slope / mean|rel| / represented / cos q05..q95")
    for s in res["per_seed"]:
        g = s["geometry"]
        print(
            f"  seed {s['seed']}: {_f(s['pearson_r'])} / {_f(s['spearman_r'])} / {_f(s['analytic_slope'])} / "
            f"{s['mean_abs_relative']:.4f} / {g['n_represented']} / {_f(g['cos_quantiles'][1])}..{_f(g['cos_quantiles'][5])}"
        )
    ortho = res["control_orthogonal"]
    print(
        f"== orthogonal control (n = d): mean|rel| {ortho['mean_abs_relative']:.2e}, max|rel| "
        f"{res['control_orthogonal_max_abs_spillover']:.2e}, max|cos| "
        f"{max(s['geometry']['max_abs_cos'] for s in ortho['per_seed']):.3f}, r {_f(ortho['pearson_r'])}"
    )
    print(
        "== step scaling (seed 0): lr x steps -> pearson, slope measured/first-order, R² of first-order, Δf_t"
    )
    for row in res["step_scaling"]:
        print(
            f"  lr {row['lr']:<5g} steps {row['steps']:<4d} {_f(row['pearson_r'])} {_f(row['analytic_slope'])} "
            f"{_f(row['analytic_r2'])} {row['delta_target']:.3f}"
        )
    print("== variants: pearson / spearman / first-order slope / mean|rel| / Δf_t")
    for row in res["variants"]:
        print(
            f"  {row['name']:22s} {_f(row['pearson_r'])} / {_f(row['spearman_r'])} / {_f(row['analytic_slope'])} / "
            f"{row['mean_abs_relative']:.4f} / {row['delta_target']:.3f}"
        )
    print("== sweep: p, n/d -> represented, mean|cos|, pearson, mean|rel|, first-order slope")
    for row in res["sweep"]:
        print(
            f"  p {row['p_active']:<5g} n/d {row['n_over_d']:<4g} rep {row['n_represented']:5.1f}/{row['n_features']:<3d} "
            f"|cos| {_f(row['mean_abs_cos'])} r {_f(row['pearson_r'])} |rel| {row['mean_abs_relative']:.2e} "
            f"slope {_f(row['analytic_slope'])}"
        )


def _other_shapes() -> None:
    """The fit on other toy shapes, to show the default toy was not picked to agree."""
    print("== other toy shapes (3 seeds x 4 targets, default fine-tuning): pearson / spearman / mean|rel|")
    for n, d, p, decay in [(20, 5, 0.05, 1.0), (80, 20, 0.02, 1.0), (40, 10, 0.1, 1.0), (40, 10, 0.05, 0.97)]:
        rows = []
        for seed in (0, 1, 2):
            toy = train_toy(
                ToyConfig(n_features=n, d_hidden=d, p_active=p, importance_decay=decay, seed=seed)
            )
            gen = torch.Generator().manual_seed(seed)
            for t in _pick_targets(toy.model, 4, 0.5, seed):
                r = measure_toy_spillover(toy.model, t, ToyFinetuneConfig(), p, gen)
                fit = fit_stats(r.measured[r.used], r.predictor[r.used])
                rows.append((fit.pearson_r, fit.spearman_r, float(np.abs(r.relative[r.used]).mean())))
        arr = np.array(rows)
        rep = toy_geometry(toy.model).n_represented
        print(
            f"  n={n} d={d} p={p} decay={decay} (rep {rep}): {arr[:, 0].mean():.3f} / {arr[:, 1].mean():.3f} / {arr[:, 2].mean():.4f}"
        )


def _tied_full_parts(cfg: TheoryConfig) -> None:
    """Which fine-tuned part (bias, encoder, readout) drives the sign flip of the tied/full variant."""
    print("== tied/full: correlation with cos of the change caused by each fine-tuned part alone (seed 0)")
    toy = train_toy(replace(cfg.toy, seed=0))
    w0, b0 = toy.model.W.detach(), toy.model.b.detach()
    n = toy.model.n_features
    parts: dict[str, list[float]] = {}
    for t in _pick_targets(toy.model, 4, 0.5, 0):
        gen = torch.Generator().manual_seed(t)
        x = sample_features(1024, n, cfg.toy.p_active, gen, active=t)
        w = finetune_toy(toy.model, t, x, ToyFinetuneConfig(mode="tied", loss="full"))
        xb = sample_features(2048, n, cfg.toy.p_active, gen, inactive=t)
        v = torch.rand(2048, n, generator=gen)
        f0 = _heldout_readouts(xb, v, FinetunedWeights(w0, w0, b0))[1]
        cos = ((w0.T @ w0[:, t]) / w0.norm(dim=0) / w0[:, t].norm()).numpy()
        used = np.arange(n) != t
        for name, ww in {
            "all": w,
            "bias only": FinetunedWeights(w0, w0, w.bias_N),
            "encoder only": FinetunedWeights(w.encoder_DN, w0, b0),
            "readout only": FinetunedWeights(w0, w.readout_DN, b0),
        }.items():
            delta = (_heldout_readouts(xb, v, ww)[1] - f0).mean(1).numpy()
            parts.setdefault(name, []).append(fit_stats(delta[used], cos[used]).pearson_r)
        parts.setdefault("Δb_j itself", []).append(
            fit_stats((w.bias_N - b0).numpy()[used], cos[used]).pearson_r
        )
    for name, rs in parts.items():
        print(f"  {name:14s} r = {np.mean(rs):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/spillover-theory-bench"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    cfg = TheoryConfig()
    res = run_theory(cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "theory.json").write_text(json.dumps(to_dict(res), indent=1))
    plot_theory(res, args.out / "theory.png")
    _print_results(res)
    _other_shapes()
    _tied_full_parts(cfg)
    print(f"total {time.perf_counter() - t0:.0f} s; wrote {args.out / 'theory.json'}")


if __name__ == "__main__":
    main()
