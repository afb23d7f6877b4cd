"""Plots of the toy spillover experiment, drawn from the saved results (never from a model).

    python -c "import json; from spillover.theory.report import plot_theory; \
plot_theory(json.load(open('theory.json')), 'theory.png')"
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["plot_theory"]


def plot_theory(results: dict[str, Any], path: str | Path) -> Path:
    """Write a 2 x 2 PNG: measured vs analytic, relative spillover vs cosine, step scaling, sweep magnitude.

    Args:
        results: the dict ``run_theory`` returns (or theory.json loaded).
        path: PNG file to write.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(2, 2, figsize=(11, 9))
    _measured_vs_analytic(axes[0, 0], results)
    _relative_vs_cosine(axes[0, 1], results)
    _step_scaling(axes[1, 0], results.get("step_scaling", []))
    sweep = results.get("sweep", [])
    if sweep:
        fig.colorbar(_sweep(axes[1, 1], sweep), ax=axes[1, 1], shrink=0.8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _measured_vs_analytic(ax: Any, results: dict[str, Any]) -> None:
    import numpy as np

    pts, opts = results["points"], results["orthogonal_points"]
    pred, meas = np.asarray(pts["predicted"]), np.asarray(pts["measured"])
    ax.scatter(pred, meas, s=8, alpha=0.5, label="superposition (n > d)")
    ax.scatter(
        opts["predicted"],
        opts["measured"],
        s=8,
        alpha=0.7,
        color="tab:red",
        label="orthogonal control (n = d)",
    )
    if pred.size:
        lim = float(np.nanmax(np.abs(np.concatenate([pred, meas])))) * 1.05
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8, label="y = x")
    ax.set_xlabel("first-order prediction  -kη ‖W_j‖ cos(d_j,d_t) Σ g⟨x,x'⟩")
    ax.set_ylabel("measured Δf_j (t inactive, j active)")
    ax.set_title(
        f"measured vs analytic: slope {results['analytic_slope']:.2f}, R² {results['analytic_r2']:.3f}"
    )
    ax.legend(fontsize=8)


def _relative_vs_cosine(ax: Any, results: dict[str, Any]) -> None:
    pts, opts = results["points"], results["orthogonal_points"]
    ax.scatter(pts["predictor"], pts["relative"], s=8, alpha=0.5, label="superposition")
    ax.scatter(
        opts["predictor"], opts["relative"], s=8, alpha=0.7, color="tab:red", label="orthogonal control"
    )
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("‖W_j‖ cos(d_j, d_t)")
    ax.set_ylabel("relative spillover Δf_j / Δf_t")
    ax.set_title(
        f"Pearson r {results['pearson_r']:.3f}, Spearman {results['spearman_r']:.3f} "
        f"({results['n_seeds']} seeds, {results['n_targets_total']} targets)"
    )
    ax.legend(fontsize=8)


def _step_scaling(ax: Any, steps: list[dict[str, Any]]) -> None:
    for lr in sorted({row["lr"] for row in steps}):
        rows = sorted((row for row in steps if row["lr"] == lr), key=lambda row: row["steps"])
        ax.plot(
            [row["lr_x_steps"] for row in rows],
            [row["analytic_slope"] for row in rows],
            "o-",
            label=f"η={lr:g}",
        )
    ax.axhline(1, color="k", lw=0.5, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("η · k (step size x steps)")
    ax.set_ylabel("slope of measured on first-order prediction")
    ax.set_title("where the first-order derivation stops holding")
    ax.legend(fontsize=8)


def _sweep(ax: Any, sweep: list[dict[str, Any]]) -> Any:
    """The p x n/d grid: colour log10 mean |relative spillover|, text Pearson r; returns the image."""
    import numpy as np

    ps = sorted({row["p_active"] for row in sweep})
    ratios = sorted({row["n_over_d"] for row in sweep})
    grid = np.full((len(ps), len(ratios)), np.nan)
    for row in sweep:
        rel = row["mean_abs_relative"]
        if rel is not None and rel > 0:
            grid[ps.index(row["p_active"]), ratios.index(row["n_over_d"])] = math.log10(rel)
    im = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    for i, row_p in enumerate(ps):
        for j, ratio in enumerate(ratios):
            cell = next(r for r in sweep if r["p_active"] == row_p and r["n_over_d"] == ratio)
            r_val = cell["pearson_r"]
            r_txt = (
                "nan" if r_val is None or (isinstance(r_val, float) and math.isnan(r_val)) else f"{r_val:.2f}"
            )
            ax.text(j, i, f"r {r_txt}", ha="center", va="center", fontsize=8, color="w")
    ax.set_xticks(range(len(ratios)), [f"{r:g}" for r in ratios])
    ax.set_yticks(range(len(ps)), [f"{p:g}" for p in ps])
    ax.set_xlabel("n / d")
    ax.set_ylabel("p (feature probability)")
    ax.set_title("sweep: colour log10 mean |Δf_j/Δf_t|, text Pearson r")
    return im
