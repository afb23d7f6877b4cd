"""The demo's summary: the geometry section and plain notes computed from the numbers, and the terminal table."""

from __future__ import annotations

from typing import Any

from spillover.filtering.sets import FILTER_METHODS

__all__ = [
    "clean_nans",
    "filtering_readout_note",
    "geometry_section",
    "organism_unit_label",
    "per_organism",
    "pooled_geometry",
    "print_summary",
    "summary_notes",
]

_DATASET_MEANS = ("score", "mean_max", "proximity", "mean_diff", "null_mean_max")
"""Per-dataset geometry numbers averaged over organisms in the pooled section."""


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
    section["per_layer_p"] = {
        str(layer["site"]["layer"] if layer["site"]["layer"] is not None else key): layer["comparison"][
            "feature_level"
        ]["permutation"]["p_value"]
        for key, layer in report["layers"].items()
        if layer.get("comparison")
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


def pooled_geometry(sections: list[dict[str, Any]], em: dict[str, Any]) -> dict[str, Any]:
    """The geometry section over several organisms (one :func:`geometry_section` each).

    Per dataset, the organisms' scores and measures are averaged (``cosines``, the plotted distribution,
    are the first organism's). The inducing-vs-control test combines the organisms' one-sided p-values
    with Stouffer's method, at the risk layer (``p_value``) and at every layer (``per_layer_p``); the
    score-vs-EM Spearman correlation uses the averaged scores and the pooled misaligned rates.
    """
    from spillover.studies.demo.pooled import combine_pvalues, spearman_with_p

    if len(sections) == 1:
        out = dict(sections[0])
    else:
        out = {k: v for k, v in sections[0].items() if not isinstance(v, dict) or "score" not in v}
        for name, first in sections[0].items():
            if not isinstance(first, dict) or "score" not in first:
                continue
            entry = dict(first)
            for key in _DATASET_MEANS:
                values = [s[name][key] for s in sections if s.get(name, {}).get(key) is not None]
                entry[key] = sum(values) / len(values) if values else None
            entry["per_organism_score"] = [s.get(name, {}).get("score") for s in sections]
            out[name] = entry
        for key in ("mean_inducing", "mean_control"):
            values = [s[key] for s in sections if s.get(key) is not None]
            out[key] = sum(values) / len(values) if values else None
    out["n_organisms"] = len(sections)
    out["per_organism_p"] = [s.get("p_value") for s in sections]
    out["p_value"] = combine_pvalues(out["per_organism_p"])
    out["paired_p_value"] = combine_pvalues([s.get("paired_p_value") for s in sections])
    layers = sorted({k for s in sections for k in s.get("per_layer_p", {})}, key=str)
    out["per_layer_p"] = {
        k: combine_pvalues([s.get("per_layer_p", {}).get(k) for s in sections]) for k in layers
    }
    if len(sections) > 1:
        out["test"] = (
            "permutation test of nearest-toxic cosines, inducing vs control latents (stratified by pair), "
            f"one-sided, Stouffer-combined over {len(sections)} organisms"
        )
    shared = [n for n in em if out.get(n, {}).get("score") is not None]
    if len(shared) >= 3:
        sp = spearman_with_p([out[n]["score"] for n in shared], [em[n]["misaligned_rate"] for n in shared])
        out["spearman_vs_em"], out["spearman_p_value"] = sp["rho"], sp["p_value"]
    return out


def organism_unit_label(seed: int, n_organisms: int) -> str:
    """The filtering section's organism label of a demo organism ("" when there is only one)."""
    return f"organism{seed}" if n_organisms > 1 else ""


def per_organism(
    organisms: list[Any],
    sections: list[dict[str, Any]],
    em: list[dict[str, Any]],
    filtering: dict[str, Any] | None,
    dynamics: list[dict[str, Any]],
) -> dict[str, Any]:
    """Each organism's own headline numbers, keyed ``seed<N>`` (what a shipped organism's manifest records).

    Args:
        organisms: the demo's organisms (anything with ``.art``, an ``OrganismArtifacts``).
        sections: their geometry sections; em: their EM entries per dataset.
        filtering: the (merged) filtering section; each method's per-unit reductions are split by organism.
        dynamics: their dynamics results (empty when skipped).
    """
    units = (filtering or {}).get("units", [])
    out: dict[str, Any] = {}
    for i, (section, em_i, inputs) in enumerate(zip(sections, em, organisms, strict=True)):
        seed = inputs.art.config.seed
        keep = ("misaligned_rate", "ci", "coherent_rate", "in_domain", "em_probability", "em_probability_ci")
        entry: dict[str, Any] = {
            "organism_run": inputs.art.run_dir.name,
            "em": {name: {k: e.get(k) for k in keep} for name, e in em_i.items()},
            "geometry": {
                "layer": section.get("layer"),
                "p_value": section.get("p_value"),
                "per_layer_p": section.get("per_layer_p"),
                "spearman_vs_em": section.get("spearman_vs_em"),
            },
        }
        label = organism_unit_label(seed, len(organisms))
        mine = [j for j, u in enumerate(units) if not label or u.startswith(f"{label}/")]
        if filtering and mine:
            methods = {
                m: e for m, e in filtering.items() if isinstance(e, dict) and "per_seed_reduction" in e
            }
            entry["filtering"] = {
                "dataset": filtering.get("dataset"),
                "relative_reduction": {
                    m: [e["per_seed_reduction"][j] for j in mine] for m, e in methods.items()
                },
                "em_probability": {
                    m: [e["em_probability_per_unit"][j] for j in mine]
                    for m, e in {"unfiltered": filtering.get("unfiltered", {}), **methods}.items()
                    if e.get("em_probability_per_unit")
                },
            }
        if i < len(dynamics):
            entry["dynamics_pearson_r"] = dynamics[i].get("pearson_r")
            entry["dynamics_pearson_r_exact"] = dynamics[i].get("pearson_r_exact")
        out[f"seed{seed}"] = entry
    return out


def filtering_readout_note(summary: dict[str, Any]) -> str | None:
    """A sentence when the filtering claim's two readouts disagree (None when they agree or one is missing).

    The verdict reads the exact EM probability; the sampled rate is printed beside it. When only one of
    their paired intervals clears 0, a newcomer sees "held" next to an interval that spans 0, so this says
    why: the binomial half-width of one fine-tune's sampled rate (at the random arm's rate and answer count)
    against the measured difference, and how to add units.
    """
    filt = summary.get("filtering") or {}
    rnd = filt.get("geometry_vs", {}).get("random") or {}
    exact = rnd.get("exact") or {}
    if not exact.get("difference_ci") or not rnd.get("relative_reduction_ci"):
        return None
    exact_held = exact["difference_ci"][1] < 0
    sampled_held = rnd["relative_reduction_ci"][0] > 0
    if exact_held == sampled_held:
        return None
    arm = filt.get("random") or {}
    rate, answers = arm.get("misaligned_rate"), arm.get("n_answers") or []
    noise = ""
    if rate is not None and answers:
        n = sum(answers) / len(answers)
        half = 1.96 * (rate * (1 - rate) / n) ** 0.5
        noise = (
            f" One fine-tune's sampled rate has a 95% half-width of about {100 * half:.1f} pp "
            f"({n:.0f} answers at {100 * rate:.1f}%), against a difference of {100 * abs(exact['difference']):.2f} pp."
        )
    lo, hi = rnd["relative_reduction_ci"]
    return (
        f"Filtering readouts disagree over {exact.get('n_units')} units: the exact EM difference "
        f"{'clears' if exact_held else 'does not clear'} 0, the sampled interval of the relative reduction "
        f"[{100 * lo:+.0f}%, {100 * hi:+.0f}%] {'does' if sampled_held else 'does not'}.{noise} "
        "More units narrow the sampled interval: --seeds 0,1,2 (fine-tuning seeds) or --organisms 0,1,2,3,4."
    )


QUICK_NOTE = (
    "Quick preset: a tiny organism trained in seconds and few samples run every stage; the numbers are a "
    "first look at the pipeline, not evidence for or against the claims, which `spillover demo` tests on "
    "the shipped organisms."
)


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

        units = len(filt.get("units") or filt.get("seeds", []))
        notes.append(
            f"Relative EM reduction at {100 * filt.get('fraction', 0):.0f}% removal over {units} "
            f"organism x seed unit(s): geometry {rr(g)}, random {rr(r)}"
            + (
                f", judge {rr(filt['judge'])}"
                if filt.get("judge", {}).get("relative_reduction") is not None
                else ""
            )
            + " (95% intervals; the paper reports a 34.5% reduction for geometry at 50%, most likely relative)."
        )
    readout = filtering_readout_note(summary)
    if readout:
        notes.append(readout)
    for name, cmp in summary.get("run", {}).get("retrained_vs_shipped", {}).items():
        notes.append(
            f"Retrained organism vs the shipped {name}: "
            + (
                "bit-identical weights."
                if cmp.get("identical")
                else f"different weights (max |difference| {cmp.get('max_abs_diff')}); its numbers are not the "
                "shipped organism's."
            )
        )
    if summary.get("run", {}).get("preset") == "quick":
        notes.append(QUICK_NOTE)
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
        for col in ("method", "EM", "95% CI", "reduction", "exact EM", "in-domain"):
            t.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
        for name in ("unfiltered", *FILTER_METHODS):
            e = filt.get(name)
            if not isinstance(e, dict):
                continue
            t.add_row(
                name,
                pct(e.get("misaligned_rate")),
                ci(e.get("ci")),
                pct(e.get("relative_reduction")) if name != "unfiltered" else "",
                pct2(e.get("em_probability")),
                pct(e.get("in_domain")),
            )
        console.print(t)
    claims = summary.get("verdicts") or []
    if claims:
        n_org = len(summary.get("run", {}).get("organisms", [])) or 1
        n_seeds = len(summary.get("run", {}).get("seeds", [])) or 1
        t = Table(title=f"Claims ({n_org} organism(s) x {n_seeds} fine-tuning seed(s); 95% intervals)")
        for col in ("claim", "measured", "interval", "verdict"):
            t.add_column(col, overflow="fold")
        for v in claims:
            style = {"held": "green", "not held": "red"}.get(v["verdict"], "yellow")
            t.add_row(v["claim"], v["measured"], v["interval"], f"[{style}]{v['verdict']}[/]")
        console.print(t)
        readout = filtering_readout_note(summary)
        if readout:
            console.print(readout)
    if summary.get("run", {}).get("preset") == "quick":
        console.print(QUICK_NOTE)
    # Stages that only read what the workers computed take no time: listing them says nothing.
    timings = {k: v for k, v in summary.get("timings", {}).items() if v >= 0.5 or k == "total_s"}
    if timings:
        console.print("time: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f}s" for k, v in timings.items()))
    workers = {k: v for k, v in summary.get("worker_time_s", {}).items() if v >= 0.5}  # a warm run: none
    if workers:
        console.print(
            "in the worker processes (summed over them, within 'parallel'): "
            + ", ".join(f"{k} {v:.0f}s" for k, v in workers.items())
        )
