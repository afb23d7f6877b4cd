"""One self-contained HTML report from a run's ``summary.json`` (figures embedded as base64 PNGs).

    spillover report runs/demo                   # writes runs/demo/report.html
    python -c "from spillover.report.html import write_html_report; write_html_report('runs/demo')"

``summary.json`` layout (every section optional; the report shows what is there). Rates are fractions
in [0, 1], intervals ``[lo, hi]``:

* ``em.<dataset>``: ``misaligned_rate``, ``ci``, ``per_seed`` (list), ``coherent_rate``, ``in_domain``
  (in-domain target rate), ``inducing`` (bool). ``em_baseline``: the same for the model before
  fine-tuning.
* ``geometry.<dataset>``: ``score``, ``per_layer`` ({layer: score}), ``cosines`` (list, for the
  histogram), ``inducing``; section-wide ``geometry.p_value``, ``geometry.test``,
  ``geometry.score_name``, ``geometry.spearman_vs_em``, ``geometry.layer``.
* ``spillover``: ``predicted`` and ``measured`` (per-feature lists), ``pearson_r``, labels.
* ``filtering``: ``dataset``, ``fraction``, ``fractions``, ``unfiltered`` (an entry), and per method
  (``geometry``, ``toxic_activation``, ``toxic_subspace``, ``persona_projection``, ``random``, ``judge``)
  an entry with ``misaligned_rate``, ``ci``, ``per_seed``, ``coherent_rate``, ``in_domain``,
  ``relative_reduction``, ``relative_reduction_ci`` at the headline fraction, and ``by_fraction``
  ({fraction: entry}).
* ``dynamics``: ``dataset``, ``steps``, ``toxic_activation``, ``misaligned_rate`` (+ ``*_sd``),
  ``pearson_r``.
* ``verdicts``: list of claims (``claim``, ``measured``, ``interval``, ``verdict``, ``criterion``), shown
  first when present (the demo's; see ``spillover.studies.demo.verdicts``).
* ``timings``: ``<stage>_s`` seconds; ``worker_time_s``: seconds by kind of job in worker processes.
  ``notes``: list of strings. ``run``: facts about the run.
* ``persona``: the SmolLM2 study's EM-persona section (``spillover.report.persona``), shown after the
  per-dataset results when present; a study's ``smollm2_study.json`` can be given in place of a summary.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from spillover.filtering.sets import FILTER_METHODS
from spillover.report.persona import persona_html
from spillover.report.plots import FIGURES

__all__ = ["load_summary", "render_report", "write_html_report"]


def _fmt_pct(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return "–"
    return f"{100 * value:.1f}%"


def _fmt_ci(ci: Any) -> str:
    if isinstance(ci, Sequence) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return "–"


def _fmt_num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    ragged = [row[0] if row else "" for row in rows if len(row) != len(header)]
    if ragged:
        raise ValueError(f"table rows {ragged} do not have the header's {len(header)} cells")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _em_table(summary: Mapping[str, Any]) -> str:
    em = summary.get("em") if isinstance(summary.get("em"), Mapping) else {}
    geo = summary.get("geometry") if isinstance(summary.get("geometry"), Mapping) else {}
    assert isinstance(em, Mapping) and isinstance(geo, Mapping)
    names = [k for k in em if isinstance(em[k], Mapping)]
    # The geometry section also holds mappings that are not datasets (per_layer_p): a dataset has a score.
    names += [k for k in geo if isinstance(geo[k], Mapping) and "score" in geo[k] and k not in names]
    if not names:
        return '<p class="missing">No per-dataset results in this run.</p>'
    rows = []
    baseline = summary.get("em_baseline")
    if isinstance(baseline, Mapping):
        rows.append(
            [
                "(before fine-tuning)",
                "",
                _fmt_pct(baseline.get("misaligned_rate")),
                _fmt_ci(baseline.get("ci")),
                _fmt_pct(baseline.get("em_probability")),
                _fmt_pct(baseline.get("coherent_rate")),
                _fmt_pct(baseline.get("in_domain")),
                "",
            ]
        )
    for name in names:
        e = em.get(name, {}) if isinstance(em.get(name), Mapping) else {}
        g = geo.get(name, {}) if isinstance(geo.get(name), Mapping) else {}
        inducing = e.get("inducing", g.get("inducing"))
        kind = "inducing" if inducing else "control" if inducing is not None else ""
        rows.append(
            [
                name,
                kind if name in em else str(g.get("role", kind)),
                _fmt_pct(e.get("misaligned_rate")),
                _fmt_ci(e.get("ci")),
                _fmt_pct(e.get("em_probability")),
                _fmt_pct(e.get("coherent_rate")),
                _fmt_pct(e.get("in_domain")),
                _fmt_num(g.get("score")),
            ]
        )
    header = [
        "dataset",
        "kind",
        "misaligned",
        "95% CI",
        "exact EM",
        "coherent",
        "in-domain",
        str(geo.get("score_name", "geometry score")),
    ]
    out = _table(header, rows)
    facts = []
    if isinstance(geo.get("p_value"), (int, float)):
        facts.append(
            f"inducing vs control geometry: p = {_fmt_num(geo['p_value'])} ({html.escape(str(geo.get('test', 'test')))})"
        )
    if isinstance(geo.get("spearman_vs_em"), (int, float)):
        facts.append(f"Spearman ρ(geometry score, EM) = {geo['spearman_vs_em']:.2f}")
    if facts:
        out += '<p class="meta">' + "; ".join(facts) + "</p>"
    return out


_METHOD_ORDER = ("unfiltered", *FILTER_METHODS)


def _removed_kinds(entry: Mapping[str, Any]) -> str:
    removed = entry.get("removed")
    if not isinstance(removed, Mapping) or not isinstance(removed.get("removed_share_by_kind"), Mapping):
        return ""
    return ", ".join(f"{k} {_fmt_pct(v)}" for k, v in removed["removed_share_by_kind"].items())


def _filter_table(summary: Mapping[str, Any]) -> str:
    filt = summary.get("filtering")
    if not isinstance(filt, Mapping):
        return '<p class="missing">No filtering experiment in this run.</p>'

    def is_row(v: Any) -> bool:  # a method's entry, not another mapping of the section
        return isinstance(v, Mapping) and "misaligned_rate" in v

    methods = [m for m in _METHOD_ORDER if is_row(filt.get(m))]
    methods += [m for m, v in filt.items() if is_row(v) and m not in methods]
    rows = []
    for m in methods:
        e = filt[m]
        rr = e.get("relative_reduction")
        exact = e.get("exact") if isinstance(e.get("exact"), Mapping) else {}
        rows.append(
            [
                m,
                _fmt_pct(e.get("fraction_removed", 0.0 if m == "unfiltered" else filt.get("fraction"))),
                _fmt_pct(e.get("misaligned_rate")),
                _fmt_ci(e.get("ci")),
                "" if m == "unfiltered" else _fmt_pct(rr),
                "" if m == "unfiltered" else _fmt_ci(e.get("relative_reduction_ci")),
                _fmt_pct(e.get("em_probability")),
                "" if m == "unfiltered" else _fmt_pct(exact.get("relative_reduction")),
                "" if m == "unfiltered" else _fmt_ci(exact.get("relative_reduction_ci")),
                _fmt_pct(e.get("coherent_rate")),
                _fmt_pct(e.get("in_domain")),
                str(len(e.get("per_seed", []))) if e.get("per_seed") else "",
                _removed_kinds(e),
            ]
        )
    header = [
        "method",
        "removed",
        "misaligned",
        "95% CI",
        "relative reduction",
        "95% CI",
        "exact EM",
        "exact reduction",
        "95% CI",
        "coherent",
        "in-domain",
        "seeds",
        "share removed by kind",
    ]
    intro = (
        f'<p class="meta">Dataset <b>{html.escape(str(filt.get("dataset", "?")))}</b>; every filtered set is '
        "fine-tuned with the same recipe and seeds as the unfiltered one. Relative reduction = "
        "1 − EM(filtered) / EM(unfiltered); intervals: bootstrap over seeds and answers. Exact: the model "
        "organism's harmful-branch probability on the same prompts (no sampling noise; interval over units). "
        "Share removed by kind (model organism only): of the samples with strong, weak or no persona evidence "
        "(the dataset's ground-truth labels), the share the filter removed.</p>"
    )
    return intro + _table(header, rows)


_VERDICT_COLOURS = {"held": "#1e7e34", "not held": "#c0392b"}


def _claims(summary: Mapping[str, Any]) -> str:
    """The first screen: every headline claim with its measurement, interval and verdict."""
    claims = summary.get("verdicts")
    if not isinstance(claims, Sequence) or not claims:
        return ""
    run = summary.get("run") if isinstance(summary.get("run"), Mapping) else {}
    assert isinstance(run, Mapping)
    units = f"{len(run.get('organisms', [])) or 1} organism(s) x {len(run.get('seeds', [])) or 1} fine-tuning seed(s)"
    rows = []
    for v in claims:
        colour = _VERDICT_COLOURS.get(str(v.get("verdict")), "#8a6d3b")
        rows.append(
            [
                html.escape(str(v.get("claim", ""))),
                html.escape(str(v.get("measured", ""))),
                html.escape(str(v.get("interval", ""))),
                f'<b style="color:{colour}">{html.escape(str(v.get("verdict", "")))}</b>',
                html.escape(str(v.get("criterion", ""))),
            ]
        )
    head = "".join(f"<th>{h}</th>" for h in ("claim", "measured", "interval", "verdict", "criterion"))
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)  # escaped above
    return (
        f'<div class="headline"><b>Claims</b> over {units}; 95% intervals. A claim that did not hold is shown '
        f"as not held.</div><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _headline(summary: Mapping[str, Any]) -> str:
    claims = _claims(summary)
    if claims:
        return claims
    filt = summary.get("filtering")
    if not isinstance(filt, Mapping) or not isinstance(filt.get("geometry"), Mapping):
        return ""
    g = filt["geometry"]
    parts = [
        f"Geometry-aware filtering of <b>{html.escape(str(filt.get('dataset', '')))}</b> at "
        f"{_fmt_pct(filt.get('fraction'))} removal: EM {_fmt_pct((filt.get('unfiltered') or {}).get('misaligned_rate'))}"
        f" → {_fmt_pct(g.get('misaligned_rate'))} (relative reduction {_fmt_pct(g.get('relative_reduction'))}"
        f" {_fmt_ci(g.get('relative_reduction_ci'))})."
    ]
    for name in ("random", "judge"):
        if isinstance(filt.get(name), Mapping):
            parts.append(f"{name}: {_fmt_pct(filt[name].get('relative_reduction'))}.")
    return '<div class="headline">' + " ".join(parts) + "</div>"


def _persona(summary: Mapping[str, Any]) -> str:
    persona = summary.get("persona")
    return "\n" + persona_html(persona) if isinstance(persona, Mapping) else ""


def _figures(summary: Mapping[str, Any]) -> str:
    out = []
    for key, title, fn in FIGURES:
        png = fn(summary)
        out.append(f'<h2 id="fig-{key}">{html.escape(title)}</h2>')
        if png is None:
            out.append('<p class="missing">Not in this run.</p>')
            continue
        data = base64.b64encode(png).decode("ascii")
        caption = (
            summary.get("captions", {}).get(key, "") if isinstance(summary.get("captions"), Mapping) else ""
        )
        out.append(
            f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
            + (f"<figcaption>{html.escape(str(caption))}</figcaption>" if caption else "")
            + "</figure>"
        )
    return "\n".join(out)


def _timings(summary: Mapping[str, Any]) -> str:
    t = summary.get("timings")
    if not isinstance(t, Mapping) or not t:
        return '<p class="missing">No timings recorded.</p>'
    rows = [[str(k).removesuffix("_s"), _fmt_num(v, 1) + " s"] for k, v in t.items()]
    workers = summary.get("worker_time_s")
    if isinstance(workers, Mapping):
        # Summed over the worker processes, so together more than the parallel stage's wall time.
        rows += [[f"in the workers: {k}", _fmt_num(v, 1) + " s"] for k, v in workers.items()]
    return _table(["stage", "wall time"], rows)


def _notes(summary: Mapping[str, Any]) -> str:
    notes = summary.get("notes")
    if not notes:
        return '<p class="missing">None.</p>'
    return '<ul class="notes">' + "".join(f"<li>{html.escape(str(n))}</li>" for n in notes) + "</ul>"


def render_report(summary: Mapping[str, Any], *, title: str | None = None, source: str | None = None) -> str:
    """The report's HTML text for a summary dict (see the module docstring for its layout).

    Args:
        summary: the loaded ``summary.json``.
        title: page title (default: "spillover report").
        source: shown under the title (e.g. the run folder).
    """
    run = summary.get("run") if isinstance(summary.get("run"), Mapping) else {}
    assert isinstance(run, Mapping)
    meta = [f"generated {time.strftime('%Y-%m-%d %H:%M')}"]
    if source:
        meta.append(f"from {html.escape(source)}")
    for key in ("preset", "organisms", "seeds", "model", "judge"):
        if key in run:
            meta.append(
                f"{key}: {html.escape(json.dumps(run[key]) if not isinstance(run[key], str) else run[key])}"
            )
    template = Template(
        resources.files("spillover.report").joinpath("templates/report.html").read_text("utf-8")
    )
    return template.substitute(
        title=html.escape(title or str(run.get("title", "spillover report"))),
        meta=" · ".join(meta),
        headline=_headline(summary),
        em_table=_em_table(summary),
        persona=_persona(summary),
        figures=_figures(summary),
        filter_table=_filter_table(summary),
        notes=_notes(summary),
        timings=_timings(summary),
    )


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    """Read ``summary.json`` from a run folder (or the file itself), with a clear error if missing."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; run `spillover demo --out {path.parent}` first, or point to a folder "
            "that holds a summary.json"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a JSON object")
    return data


def write_html_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` for a run folder from its saved ``summary.json`` only.

    Args:
        run_dir: folder with ``summary.json`` (or the JSON file).
        out: the HTML file (default: ``report.html`` beside the summary).

    Returns:
        The path written.
    """
    source = Path(run_dir)
    summary = load_summary(source)
    folder = source if source.is_dir() else source.parent
    target = Path(out) if out is not None else folder / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(render_report(summary, source=str(folder)), encoding="utf-8")
    tmp.replace(target)
    return target
