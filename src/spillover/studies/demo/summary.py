"""The demo's summary: the geometry section and plain notes computed from the numbers, and the terminal table."""

from __future__ import annotations

from typing import Any

from spillover.filtering.sets import FILTER_METHODS

__all__ = ["clean_nans", "geometry_section", "print_summary", "summary_notes"]


def geometry_section(report: dict[str, Any], em: dict[str, Any]) -> dict[str, Any]:
    """The summary's ``geometry`` section: per dataset its risk score, per-layer measure and nearest-toxic
    cosines; the inducing-vs-control permutation test; and, with 3 or more EM datasets, the Spearman
    correlation of the score with the misaligned rate."""
    from spillover.geometry.risk import layer_measure

    risk = report["risk"]
    layer_key = risk["layers"][0]
    measure = risk["measure"]
    section: dict[str, Any] = {
        "score_name": f"risk ({measure}, {', '.join(risk['layers'])})",
        "layer": layer_key,
        "definition": risk["definition"],
        "cosine_kind": f"nearest-toxic decoder cosine of each dataset latent ({layer_key})",
    }
    for name, info in report["datasets"].items():
        per_layer: dict[str, float | None] = {}
        for key, layer in report["layers"].items():
            d = layer["datasets"][name]
            metrics = {
                "mean_diff": d["mean_diff"],
                "proximity": d["geometry"]["proximity"],
                "null_mean_max": d["null"]["mean_max"]["null_mean"],
            }
            clean = {k: (float("nan") if v is None else float(v)) for k, v in metrics.items()}
            value = layer_measure(clean, measure)
            per_layer[str(layer["site"]["layer"] if layer["site"]["layer"] is not None else key)] = (
                None if value != value else value
            )
        at = report["layers"][layer_key]["datasets"][name]
        section[name] = {
            "score": risk["scores"].get(name),
            "per_layer": per_layer,
            "cosines": at["geometry"]["max_cos"],
            "mean_max": at["geometry"]["mean_max"],
            "proximity": at["geometry"]["proximity"],
            "mean_diff": at["mean_diff"],
            "null_mean_max": at["null"]["mean_max"]["null_mean"],
            "inducing": info["role"] == "inducing",
            "role": info["role"],
        }
    comp = report["layers"][layer_key].get("comparison")
    if comp:
        section["p_value"] = comp["feature_level"]["permutation"]["p_value"]
        section["test"] = (
            "permutation test of nearest-toxic cosines, inducing vs control latents (stratified by pair)"
        )
        section["mean_inducing"] = comp["feature_level"]["mean_inducing"]
        section["mean_control"] = comp["feature_level"]["mean_control"]
        if "paired" in comp:
            section["paired_p_value"] = comp["paired"][measure if measure in comp["paired"] else "mean_diff"][
                "test"
            ]["p_value"]
    shared = [n for n in em if section.get(n, {}).get("score") is not None]
    if len(shared) >= 3:
        from scipy.stats import spearmanr

        rho = spearmanr(
            [section[n]["score"] for n in shared], [em[n]["misaligned_rate"] for n in shared]
        ).statistic
        section["spearman_vs_em"] = None if rho != rho else float(rho)
    return section


def summary_notes(summary: dict[str, Any]) -> list[str]:
    """Plain statements computed from the numbers (no claim the numbers do not support)."""
    notes = []
    em = summary.get("em", {})
    base = summary.get("em_baseline", {}).get("misaligned_rate")
    ind = [v["misaligned_rate"] for v in em.values() if v.get("inducing")]
    ctl = [v["misaligned_rate"] for v in em.values() if not v.get("inducing")]
    if ind and ctl and base is not None:
        notes.append(
            f"Mean EM: inducing {100 * sum(ind) / len(ind):.1f}%, control {100 * sum(ctl) / len(ctl):.1f}%, "
            f"before fine-tuning {100 * base:.1f}%."
        )
    filt = summary.get("filtering", {})
    g, r = filt.get("geometry", {}), filt.get("random", {})
    if g.get("relative_reduction") is not None and r.get("relative_reduction") is not None:

        def rr(e: dict[str, Any]) -> str:
            ci = e.get("relative_reduction_ci")
            return f"{100 * e['relative_reduction']:.0f}%" + (
                f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci else ""
            )

        notes.append(
            f"Relative EM reduction at {100 * filt.get('fraction', 0):.0f}% removal over {len(filt.get('seeds', []))} "
            f"seed(s): geometry {rr(g)}, random {rr(r)}"
            + (
                f", judge {rr(filt['judge'])}"
                if filt.get("judge", {}).get("relative_reduction") is not None
                else ""
            )
            + " (95% intervals; the paper reports a 34.5% reduction for geometry at 50%, most likely relative)."
        )
    if summary.get("run", {}).get("preset") == "quick":
        notes.append(
            "Quick preset: a tiny organism and few samples; numbers are for a first look, not for conclusions."
        )
    return notes


def clean_nans(obj: Any) -> Any:
    """``obj`` with every NaN replaced by None (summary.json is strict JSON)."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: clean_nans(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_nans(v) for v in obj]
    return obj


def print_summary(summary: dict[str, Any], console: Any = None) -> None:
    """The short terminal table: EM and geometry per dataset, filtering per method, time."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()

    def pct(v: Any) -> str:
        return "–" if v is None else f"{100 * v:.1f}%"

    def ci(v: Any) -> str:
        return "" if not v else f"[{100 * v[0]:.1f}, {100 * v[1]:.1f}]"

    def pct2(v: Any) -> str:
        return "–" if v is None else f"{100 * v:.2f}%"

    table = Table(title="EM and geometry per dataset")
    for col in ("dataset", "kind", "misaligned", "95% CI", "in-domain", "geometry score"):
        table.add_column(col, justify="left" if col in ("dataset", "kind") else "right")
    geo = summary.get("geometry", {})
    base = summary.get("em_baseline")
    if base:
        table.add_row(
            "(before fine-tuning)", "", pct(base.get("misaligned_rate")), ci(base.get("ci")), "", ""
        )
    for name, e in summary.get("em", {}).items():
        score = geo.get(name, {}).get("score")
        table.add_row(
            name,
            "inducing" if e.get("inducing") else "control",
            pct(e.get("misaligned_rate")),
            ci(e.get("ci")),
            pct(e.get("in_domain")),
            "–" if score is None else f"{score:.3f}",
        )
    console.print(table)
    exact = [("before", base or {}), *summary.get("em", {}).items()]
    if any(e.get("em_probability") is not None for _, e in exact):
        console.print(
            "exact harmful-branch probability (from logits, same prompts): "
            + ", ".join(f"{n} {pct2(e.get('em_probability'))}" for n, e in exact)
        )
    if geo.get("p_value") is not None:
        console.print(f"geometry: inducing vs control latents, p = {geo['p_value']:.3g} ({geo.get('layer')})")
    filt = summary.get("filtering")
    if filt:
        t = Table(title=f"Filtering {filt.get('dataset')} at {100 * filt.get('fraction', 0):.0f}% removal")
        for col in ("method", "misaligned", "95% CI", "relative reduction", "in-domain"):
            t.add_column(col, justify="left" if col == "method" else "right")
        for name in ("unfiltered", *FILTER_METHODS):
            e = filt.get(name)
            if not isinstance(e, dict):
                continue
            t.add_row(
                name,
                pct(e.get("misaligned_rate")),
                ci(e.get("ci")),
                pct(e.get("relative_reduction")) if name != "unfiltered" else "",
                pct(e.get("in_domain")),
            )
        console.print(t)
    dyn = summary.get("dynamics")
    if dyn and dyn.get("pearson_r") is not None:
        console.print(
            f"dynamics ({dyn.get('dataset')}): toxic activation vs misaligned rate over steps, r = {dyn['pearson_r']:.2f}"
        )
    timings = summary.get("timings", {})
    if timings:
        console.print("time: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f}s" for k, v in timings.items()))
