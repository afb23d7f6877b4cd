"""Plots drawn from a saved geometry report (never from a model).

* ``cosine_hist.png``: per layer, the nearest-toxic cosines of inducing vs control datasets' latents
  (and of plain datasets when there are no roles), and the pairwise-cosine histograms.
* ``layer_curves.png``: per dataset, SAE proximity, nearest-toxic mean and mean-difference score
  across layers (inducing solid, control dashed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["plot_cosine_histograms", "plot_layer_curves", "plot_report"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _groups(report: Mapping[str, Any]) -> dict[str, list[str]]:
    roles = {n: d["role"] for n, d in report["datasets"].items()}
    groups: dict[str, list[str]] = {}
    for name, role in roles.items():
        groups.setdefault(role, []).append(name)
    return groups


def plot_cosine_histograms(report: Mapping[str, Any], path: str | Path) -> Path:
    """Nearest-toxic and pairwise cosine histograms, inducing vs control, one column per layer."""
    plt = _plt()
    layers = list(report["layers"])
    groups = _groups(report)
    colors = {"inducing": "tab:red", "control": "tab:blue", "dataset": "tab:gray"}
    fig, axes = plt.subplots(2, len(layers), figsize=(4.2 * len(layers), 6.5), squeeze=False)
    bins = int(report.get("hist_bins", 40))
    edges = [-1 + 2 * i / bins for i in range(bins + 1)]
    centers = [(edges[i] + edges[i + 1]) / 2 for i in range(bins)]
    for col, key in enumerate(layers):
        per = report["layers"][key]["datasets"]
        top, bottom = axes[0][col], axes[1][col]
        for role, names in groups.items():
            values = [v for n in names for v in per[n]["geometry"]["max_cos"] if v is not None]
            if values:
                top.hist(
                    values,
                    bins=20,
                    range=(-0.2, 1.0),
                    alpha=0.5,
                    density=True,
                    color=colors.get(role),
                    label=f"{role} (n={len(values)})",
                )
            counts = [0] * bins
            for n in names:
                for i, c in enumerate(per[n]["geometry"]["hist"]):
                    counts[i] += c
            total = sum(counts)
            if total:
                bottom.plot(centers, [c / total for c in counts], color=colors.get(role), label=role)
        top.set_title(f"{key}: nearest toxic latent")
        top.set_xlabel("decoder cosine")
        top.legend(fontsize=8)
        bottom.set_title(f"{key}: all dataset x toxic pairs")
        bottom.set_xlabel("decoder cosine")
        bottom.set_ylabel("share of pairs")
        bottom.set_xlim(-0.6, 1.0)
        bottom.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_layer_curves(report: Mapping[str, Any], path: str | Path) -> Path:
    """Per-dataset SAE proximity, mean nearest-toxic cosine and mean-difference score across layers."""
    plt = _plt()
    layers = list(report["layers"])
    x = [
        report["layers"][k]["site"]["layer"] if report["layers"][k]["site"]["layer"] is not None else i
        for i, k in enumerate(layers)
    ]
    metrics = (
        ("proximity", "SAE proximity (shared = 1)"),
        ("mean_max", "mean nearest-toxic cosine"),
        ("mean_diff", "mean-difference cosine"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    cmap = plt.get_cmap("tab10")
    for j, name in enumerate(report["datasets"]):
        role = report["datasets"][name]["role"]
        style = "-" if role == "inducing" else "--" if role == "control" else ":"
        for ax, (metric, title) in zip(axes, metrics, strict=True):
            ys = []
            for k in layers:
                entry = report["layers"][k]["datasets"][name]
                v = entry["geometry"][metric] if metric in ("proximity", "mean_max") else entry[metric]
                ys.append(float("nan") if v is None else v)
            ax.plot(x, ys, style, marker="o", color=cmap(j % 10), label=f"{name} ({role})")
            ax.set_title(title)
            ax.set_xlabel("layer")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_report(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Both plots into ``out_dir``."""
    out = Path(out_dir)
    return [
        plot_cosine_histograms(report, out / "cosine_hist.png"),
        plot_layer_curves(report, out / "layer_curves.png"),
    ]
