"""The EM-vs-retention frontier: what each mitigation costs in the narrow task for what it buys in EM.

A filter that lowers EM by removing the task slides left along the x axis; one that lowers EM while
the task survives moves straight down. Drawn from saved results only (a summary's ``filtering`` section
and, from ``spillover mitigate``, its ``arms``), like every figure of :mod:`spillover.report.plots`.

    python -c "import json; from spillover.report.frontier import plot_frontier; \\
open('frontier.png','wb').write(plot_frontier(json.load(open('mitigate.json'))))"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spillover.report.plots import METHOD_COLORS, _num, _plt, _png

__all__ = ["ARM_COLOR", "plot_frontier"]

ARM_COLOR = "#27ae60"
"""Fine-tuning arms (training-time defenses) are drawn in one colour with distinct markers."""
_ARM_MARKERS = ("D", "^", "v", "P", "X", "*", "h")


def _err(entry: Mapping[str, Any], rate: float) -> list[list[float]] | None:
    ci = entry.get("ci")
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return None
    return [[max(0.0, 100 * (rate - ci[0]))], [max(0.0, 100 * (ci[1] - rate))]]


def _point(entry: Any) -> tuple[float, float] | None:
    """(retention %, misaligned %) of an entry, None without both."""
    if not isinstance(entry, Mapping):
        return None
    rate, ret = _num(entry.get("misaligned_rate")), _num(entry.get("in_domain"))
    return None if rate is None or ret is None else (100 * ret, 100 * rate)


def plot_frontier(summary: Mapping[str, Any]) -> bytes | None:
    """Misaligned answers vs in-domain task retention: one curve per filter through its fractions (the
    unfiltered run at fraction 0), one point per fine-tuning arm, the retention budget of the
    matched-retention comparison as a dashed line and each filter's budget point as a star.

    Reads ``filtering.retention_budget`` / ``retention_drop`` and each method's ``matched_retention``.
    Returns None when the summary has no filtering section with in-domain retention.
    """
    filt = summary.get("filtering")
    if not isinstance(filt, Mapping):
        return None
    base = _point(filt.get("unfiltered"))
    methods = {
        k: v for k, v in filt.items() if isinstance(v, Mapping) and isinstance(v.get("by_fraction"), Mapping)
    }
    raw_arms = summary.get("arms")
    arms: Mapping[str, Any] = raw_arms if isinstance(raw_arms, Mapping) else {}
    if base is None and not arms:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    if base is not None:
        unfiltered = filt["unfiltered"]
        ax.errorbar(
            [base[0]],
            [base[1]],
            yerr=_err(unfiltered, base[1] / 100),
            fmt="s",
            color=METHOD_COLORS["unfiltered"],
            capsize=3,
            label="unfiltered",
            zorder=3,
        )
    for name, entry in methods.items():
        color = METHOD_COLORS.get(name)
        points = [base] if base is not None else []
        labels = ["0"] if base is not None else []
        for f in sorted(entry["by_fraction"], key=float):
            p = _point(entry["by_fraction"][f])
            if p is not None:
                points.append(p)
                labels.append(f)
        if not points:
            continue
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, marker="o", ms=4, color=color, lw=2.2 if name == "geometry" else 1.2, label=name)
        for x, y, f in zip(xs[1:], ys[1:], labels[1:], strict=True):
            ax.annotate(f, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points", color=color)
            err = _err(entry["by_fraction"][f], y / 100)
            if err is not None:
                ax.errorbar(
                    [x], [y], yerr=err, fmt="none", ecolor=color, elinewidth=0.8, capsize=2, alpha=0.6
                )
        budget = entry.get("matched_retention")
        if isinstance(budget, Mapping) and budget.get("at_target"):
            bx, by = _num(budget.get("retention")), _num(budget.get("misaligned_rate"))
            if bx is not None and by is not None:
                ax.plot([100 * bx], [100 * by], marker="*", ms=11, color=color, mec="black", mew=0.5)
    for i, (name, entry) in enumerate(arms.items()):
        p = _point(entry)
        if p is None:
            continue
        ax.errorbar(
            [p[0]],
            [p[1]],
            yerr=_err(entry, p[1] / 100),
            fmt=_ARM_MARKERS[i % len(_ARM_MARKERS)],
            color=ARM_COLOR,
            capsize=3,
            label=f"arm: {name}",
            zorder=3,
        )
    target, drop = _num(filt.get("retention_budget")), _num(filt.get("retention_drop"))
    if target is not None and drop is not None:
        budget_label = f"budget: unfiltered - {100 * drop:g} pp"
        ax.axvline(100 * target, ls="--", color="#999999", lw=1, label=budget_label)
    ax.set_xlabel("in-domain task retention (%)")
    ax.set_ylabel("misaligned answers (%)")
    ax.set_title(f"EM vs task retention: {filt.get('dataset', '')}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    return _png(fig)
