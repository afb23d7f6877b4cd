"""A sweep's ``report.html``: counts, the aggregate table, per-factor plots and every failure with its log.

Plots are drawn from the saved table only (matplotlib, Agg backend) and embedded as PNG data.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from spillover.pipeline.registry import PlotSpec

if TYPE_CHECKING:
    import pandas as pd

    from spillover.pipeline.sweep import SweepPlan

__all__ = ["write_sweep_report"]

log = logging.getLogger(__name__)


def _plot_png(table: pd.DataFrame, spec: PlotSpec) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    cols = [spec.x, spec.y] + ([spec.hue] if spec.hue else [])
    if any(c not in table.columns for c in cols):
        log.info(
            "plot %s vs %s skipped: the table has no column(s) %s",
            spec.y,
            spec.x,
            [c for c in cols if c not in table.columns],
        )
        return None
    data = table[table["status"] == "done"][cols].copy()
    data[spec.y] = pd.to_numeric(data[spec.y], errors="coerce")
    data = data.dropna(subset=[spec.y])
    if data.empty:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    groups = data.groupby(spec.hue, sort=True, dropna=False) if spec.hue else [(None, data)]
    for name, sub in groups:
        label = None if spec.hue is None else f"{spec.hue}={name[0] if isinstance(name, tuple) else name}"
        if spec.kind == "scatter":
            ax.scatter(pd.to_numeric(sub[spec.x], errors="coerce"), sub[spec.y], label=label, alpha=0.8)
            continue
        stats = sub.groupby(spec.x, sort=True)[spec.y].agg(["mean", "std", "count"]).reset_index()
        ax.errorbar(
            stats[spec.x].astype(str) if not pd.api.types.is_numeric_dtype(stats[spec.x]) else stats[spec.x],
            stats["mean"],
            yerr=stats["std"].fillna(0.0),
            marker="o",
            capsize=3,
            label=label,
        )
    ax.set_xlabel(spec.x)
    ax.set_ylabel(spec.y if spec.kind == "scatter" else f"{spec.y} (mean ± sd over cells)")
    ax.set_title(spec.title or f"{spec.y} vs {spec.x}")
    if spec.hue:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _log_tail(path: str | None, n: int = 30) -> str:
    if not path or not Path(path).is_file():
        return "(no log)"
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(lines[-n:])


def write_sweep_report(plan: SweepPlan, table: pd.DataFrame, nodes_table: pd.DataFrame, out: Path) -> Path:
    """``report.html``: counts, the aggregate table, the per-factor plots and every failure with its log tail."""
    plots = plan.spec.plots if plan.spec.plots is not None else list(plan.pipeline.plots)
    figures = []
    for spec in plots:
        png = _plot_png(table, spec)
        if png is not None:
            (out / "plots").mkdir(exist_ok=True)
            name = f"{spec.y}_vs_{spec.x}" + (f"_by_{spec.hue}" if spec.hue else "")
            (out / "plots" / f"{name.replace('/', '_')}.png").write_bytes(png)
            figures.append(
                f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode()}"></figure>'
            )
    counts = table["status"].value_counts().to_dict()
    failures = nodes_table[nodes_table["status"] == "failed"]
    fail_html = "".join(
        f"<h3>{html.escape(r.stage)} {html.escape(r.node)} ({r.attempts} attempt(s))</h3>"
        f"<p>{html.escape(str(r.error))}</p><p>log: <code>{html.escape(str(r.log))}</code></p>"
        f"<pre>{html.escape(_log_tail(r.log))}</pre>"
        for r in failures.itertuples()
    )
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>sweep {html.escape(plan.spec.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px}} figure{{display:inline-block;margin:0.5em}} pre{{background:#f6f6f6;padding:0.5em;overflow:auto}}</style>
</head><body><h1>Sweep {html.escape(plan.spec.name)}</h1>
<p>pipeline <code>{html.escape(plan.pipeline.name)}</code>, {len(plan.cells)} cells, {len(plan.graph)} stage runs;
cells: {html.escape(", ".join(f"{v} {k}" for k, v in counts.items()))}</p>
<h2>Per-factor plots</h2>{"".join(figures) or "<p>(none: no finished cells, or the plotted columns are absent)</p>"}
<h2>Cells</h2>{table.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")}
<h2>Failures</h2>{fail_html or "<p>none</p>"}
<h2>Stage runs</h2>{nodes_table.drop(columns=["log"]).to_html(index=False, na_rep="")}
</body></html>"""
    path = out / "report.html"
    path.write_text(body, encoding="utf-8")
    return path
