"""The report's figures, drawn from a saved ``summary.json`` only (plotting never calls a model).

Each ``plot_*`` function takes the summary dict and returns PNG bytes, or None when the summary lacks
that section (a partial run still gets a report). The summary's layout is documented in
:mod:`spillover.report.html`.

    python -c "import json; from spillover.report.plots import plot_em; \
open('em.png','wb').write(plot_em(json.load(open('summary.json'))))"
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "FIGURES",
    "plot_cosine_histograms",
    "plot_dynamics",
    "plot_em",
    "plot_filtering",
    "plot_layers",
    "plot_spillover",
]

INDUCING_COLOR = "#c0392b"
CONTROL_COLOR = "#2e86c1"
METHOD_COLORS = {
    "unfiltered": "#555555",
    "random": "#7f8c8d",
    "judge": "#8e44ad",
    "geometry": "#c0392b",
    "toxic_activation": "#e67e22",
    "toxic_subspace": "#16a085",
    "persona_projection": "#2e86c1",
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def _datasets(summary: Mapping[str, Any], section: str) -> dict[str, Mapping[str, Any]]:
    """The per-dataset entries of a section (entries that are dicts; other keys are section-wide)."""
    part = summary.get(section)
    if not isinstance(part, Mapping):
        return {}
    return {k: v for k, v in part.items() if isinstance(v, Mapping)}


def _is_inducing(summary: Mapping[str, Any], name: str) -> bool:
    for section in ("em", "geometry"):
        entry = _datasets(summary, section).get(name, {})
        if "inducing" in entry:
            return bool(entry["inducing"])
    return False


def plot_em(summary: Mapping[str, Any]) -> bytes | None:
    """EM (misaligned rate) per dataset: bars with CIs, per-seed points; inducing sets in red."""
    em = {k: v for k, v in _datasets(summary, "em").items() if _num(v.get("misaligned_rate")) is not None}
    if not em:
        return None
    plt = _plt()
    names = list(em)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 3.6))
    for i, name in enumerate(names):
        entry = em[name]
        rate = 100 * float(entry["misaligned_rate"])
        color = INDUCING_COLOR if _is_inducing(summary, name) else CONTROL_COLOR
        ax.bar(i, rate, color=color, alpha=0.75, width=0.7)
        ci = entry.get("ci")
        if isinstance(ci, Sequence) and len(ci) == 2 and None not in ci:
            ax.errorbar(
                i,
                rate,
                yerr=[[max(0.0, rate - 100 * ci[0])], [max(0.0, 100 * ci[1] - rate)]],
                color="black",
                capsize=4,
                lw=1,
            )
        seeds = [v for v in entry.get("per_seed", []) if _num(v) is not None]
        if seeds:
            ax.scatter([i] * len(seeds), [100 * v for v in seeds], color="black", s=10, zorder=3)
    base = (
        _num(summary.get("em_baseline", {}).get("misaligned_rate"))
        if isinstance(summary.get("em_baseline"), Mapping)
        else None
    )
    if base is not None:
        ax.axhline(100 * base, color="gray", ls="--", lw=1, label="before fine-tuning")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("misaligned answers (%)")
    ax.set_title("Emergent misalignment per fine-tuning dataset (red: inducing, blue: control)")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_cosine_histograms(summary: Mapping[str, Any]) -> bytes | None:
    """Distribution of decoder cosines of each dataset's features with the toxic features."""
    geo = {k: v for k, v in _datasets(summary, "geometry").items() if v.get("cosines")}
    if not geo:
        return None
    plt = _plt()
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.6))
    all_values = np.concatenate([np.asarray(v["cosines"], dtype=float) for v in geo.values()])
    bins = np.linspace(min(0.0, float(all_values.min())), max(1.0, float(all_values.max())), 31)
    for group, color in ((True, INDUCING_COLOR), (False, CONTROL_COLOR)):
        members = [k for k in geo if _is_inducing(summary, k) == group]
        if not members:
            continue
        pooled = np.concatenate([np.asarray(geo[k]["cosines"], dtype=float) for k in members])
        label = ("inducing" if group else "control") + f" ({', '.join(members)})"
        ax.hist(pooled, bins=bins, density=True, alpha=0.45, color=color, label=label)
        for k in members:
            ax.hist(
                np.asarray(geo[k]["cosines"], dtype=float),
                bins=bins,
                density=True,
                histtype="step",
                color=color,
                lw=0.8,
            )
    what = summary.get("geometry", {}).get(
        "cosine_kind", "max cosine of each dataset feature to the toxic features"
    )
    ax.set_xlabel(str(what))
    ax.set_ylabel("density")
    ax.set_title("Dataset features vs toxic features: decoder cosines")
    ax.legend(fontsize=7)
    return _png(fig)


def plot_layers(summary: Mapping[str, Any]) -> bytes | None:
    """The geometry score per layer, one line per dataset."""
    geo = {
        k: v
        for k, v in _datasets(summary, "geometry").items()
        if isinstance(v.get("per_layer"), Mapping) and v["per_layer"]
    }
    if not geo:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, entry in geo.items():
        layers = sorted(entry["per_layer"], key=lambda s: int(s))
        values = [_num(entry["per_layer"][layer]) for layer in layers]
        color = INDUCING_COLOR if _is_inducing(summary, name) else CONTROL_COLOR
        ax.plot(
            [int(layer) for layer in layers],
            [math.nan if v is None else v for v in values],
            marker="o",
            color=color,
            alpha=0.8,
            label=name,
        )
    ax.set_xlabel("layer")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(str(summary.get("geometry", {}).get("score_name", "geometry score")))
    ax.set_title("Geometry per layer (red: inducing, blue: control)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_spillover(summary: Mapping[str, Any]) -> bytes | None:
    """Measured vs predicted spillover (per feature), and the geometry score vs EM per dataset."""
    spill = summary.get("spillover")
    points = (
        spill if isinstance(spill, Mapping) and spill.get("predicted") and spill.get("measured") else None
    )
    em = _datasets(summary, "em")
    geo = _datasets(summary, "geometry")
    pairs = [
        (k, _num(geo[k].get("score")), _num(em[k].get("misaligned_rate")))
        for k in geo
        if k in em
        and _num(geo[k].get("score")) is not None
        and _num(em[k].get("misaligned_rate")) is not None
    ]
    panels = (points is not None) + (len(pairs) >= 2)
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.8), squeeze=False)
    col = 0
    if points is not None:
        ax = axes[0, col]
        col += 1
        pred, meas = list(points["predicted"]), list(points["measured"])
        ax.scatter(pred, meas, s=10, alpha=0.6, color="#34495e")
        r = _num(points.get("pearson_r"))
        ax.set_xlabel("predicted: Σ_t w_t cos(d_j, d_t)")
        ax.set_ylabel("measured: Δ activation on neutral data")
        ax.set_title("Spillover per feature" + (f" (Pearson r = {r:.2f})" if r is not None else ""))
        ax.axhline(0, color="gray", lw=0.5)
        ax.axvline(0, color="gray", lw=0.5)
    if len(pairs) >= 2:
        ax = axes[0, col]
        for name, score, rate in pairs:
            assert score is not None and rate is not None
            color = INDUCING_COLOR if _is_inducing(summary, name) else CONTROL_COLOR
            ax.scatter(score, 100 * rate, color=color, s=30)
            ax.annotate(name, (score, 100 * rate), fontsize=7, xytext=(3, 3), textcoords="offset points")
        rho = _num(summary.get("geometry", {}).get("spearman_vs_em"))
        ax.set_xlabel(str(summary.get("geometry", {}).get("score_name", "geometry score")))
        ax.set_ylabel("misaligned answers (%)")
        ax.set_title("Geometry predicts EM" + (f" (Spearman ρ = {rho:.2f})" if rho is not None else ""))
        ax.grid(alpha=0.3)
    return _png(fig)


def plot_filtering(summary: Mapping[str, Any]) -> bytes | None:
    """EM vs fraction removed, one line per filtering method (mean over seeds, CI band)."""
    filt = summary.get("filtering")
    if not isinstance(filt, Mapping):
        return None
    methods = {
        k: v
        for k, v in filt.items()
        if isinstance(v, Mapping) and isinstance(v.get("by_fraction"), Mapping) and k != "unfiltered"
    }
    if not methods:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    base = filt.get("unfiltered") if isinstance(filt.get("unfiltered"), Mapping) else None
    base_rate = _num(base.get("misaligned_rate")) if base else None
    if base_rate is not None and base is not None:
        ci = base.get("ci")
        err = [[max(0.0, 100 * (base_rate - ci[0]))], [max(0.0, 100 * (ci[1] - base_rate))]] if ci else None
        ax.errorbar(
            [0.0],
            [100 * base_rate],
            yerr=err,
            fmt="s",
            color=METHOD_COLORS["unfiltered"],
            capsize=3,
            label="unfiltered",
        )
    # Methods sit side by side around each fraction so their intervals stay readable.
    width = 0.012 * max(1, len(methods) - 1)
    for i, (name, entry) in enumerate(methods.items()):
        offset = (
            (i - (len(methods) - 1) / 2) * (width / max(1, len(methods) - 1)) if len(methods) > 1 else 0.0
        )
        xs, ys, lo, hi = [], [], [], []
        if base_rate is not None:
            xs.append(0.0)
            ys.append(100 * base_rate)
            lo.append(0.0)
            hi.append(0.0)
        for f in sorted(entry["by_fraction"], key=float):
            point = entry["by_fraction"][f]
            rate = _num(point.get("misaligned_rate"))
            if rate is None:
                continue
            ci = point.get("ci")
            xs.append(float(f) + offset)
            ys.append(100 * rate)
            lo.append(max(0.0, 100 * (rate - ci[0])) if ci else 0.0)
            hi.append(max(0.0, 100 * (ci[1] - rate)) if ci else 0.0)
        color = METHOD_COLORS.get(name, None)
        ax.errorbar(
            xs,
            ys,
            yerr=[lo, hi],
            marker="o",
            label=name,
            color=color,
            capsize=3,
            lw=2.2 if name == "geometry" else 1.2,
            ms=5,
        )
    ax.set_xlabel("fraction of training samples removed")
    ax.set_ylabel("misaligned answers (%)")
    ax.set_title(f"Filtering {filt.get('dataset', '')}: EM vs fraction removed")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    return _png(fig)


def plot_dynamics(summary: Mapping[str, Any]) -> bytes | None:
    """Toxic-feature activation on neutral prompts and the misaligned rate over fine-tuning steps."""
    dyn = summary.get("dynamics")
    if not isinstance(dyn, Mapping) or not dyn.get("steps"):
        return None
    plt = _plt()
    steps = list(dyn["steps"])
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    tox = [_num(v) for v in dyn.get("toxic_activation", [])]
    if tox:
        ax.plot(
            steps,
            [math.nan if v is None else v for v in tox],
            marker="o",
            color="#e67e22",
            label="toxic-feature activation (neutral prompts)",
        )
        band = dyn.get("toxic_activation_sd")
        if band:
            import numpy as np

            t, s = np.array(tox, dtype=float), np.array(band, dtype=float)
            ax.fill_between(steps, t - s, t + s, color="#e67e22", alpha=0.15)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("toxic-feature activation", color="#e67e22")
    ax2 = ax.twinx()
    rates = [_num(v) for v in dyn.get("misaligned_rate", [])]
    if rates:
        ax2.plot(
            steps,
            [math.nan if v is None else 100 * v for v in rates],
            marker="s",
            color=INDUCING_COLOR,
            label="misaligned answers (%)",
        )
        band = dyn.get("misaligned_rate_sd")
        if band:
            import numpy as np

            r, s = 100 * np.array(rates, dtype=float), 100 * np.array(band, dtype=float)
            ax2.fill_between(steps, r - s, r + s, color=INDUCING_COLOR, alpha=0.12)
    ax2.set_ylabel("misaligned answers (%)", color=INDUCING_COLOR)
    ax2.set_ylim(bottom=0)
    ax.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(
        lines, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False
    )
    corr = _num(dyn.get("pearson_r"))
    ax.set_title(
        f"Training dynamics ({dyn.get('dataset', '')})" + (f", r = {corr:.2f}" if corr is not None else "")
    )
    return _png(fig)


FIGURES: tuple[tuple[str, str, Callable[[Mapping[str, Any]], bytes | None]], ...] = (
    ("em", "Emergent misalignment per dataset", plot_em),
    ("cosines", "Cosine histograms: inducing vs control", plot_cosine_histograms),
    ("layers", "Geometry per layer", plot_layers),
    ("spillover", "Measured vs predicted spillover", plot_spillover),
    ("filtering", "Filtering curves", plot_filtering),
    ("dynamics", "Training dynamics", plot_dynamics),
)
"""(key, title, function) of every figure, in report order."""
