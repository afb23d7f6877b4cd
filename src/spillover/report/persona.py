"""The SmolLM2 study's EM-persona section, for people: tables plus one plain sentence each on what held.

``persona_sections`` turns a study report's ``persona`` section (``spillover.realmodel.persona_study``)
into a list of ``Section``s, rendered as Markdown (``persona_markdown``, ``study_markdown`` for the whole
study report) or HTML (``persona_html``, used by ``spillover.report.html``). Parts:

1. held-out validation: per layer and readout, the out-of-fold AUROC on held-out questions with its
   bootstrap interval, the within-question AUROC, the label-swap p and its Holm adjustment;
2. topic control: how far the readout spreads questions apart against how far it separates misaligned
   from aligned (held when the spread is below the gap);
3. the datasets against the persona: geometry, mean-difference and paired tests with their nulls and Holm
   p (one family over every persona test and layer);
4. the shift (when the fine-tunes ran): bad minus good medical, as a share of the persona gap, with t
   intervals over seeds;
5. the risk score's ranking against literature EM rates: a cross-model comparison.

"Held" uses the report's own Holm-adjusted p-values at ``ALPHA``; nothing is recomputed here.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypeGuard

__all__ = ["ALPHA", "Section", "persona_html", "persona_markdown", "persona_sections", "study_markdown"]

ALPHA = 0.05
"""Significance level of the plain statements (applied to the report's Holm-adjusted p-values)."""

_READOUTS = ("direction", "direction_topic_orthogonal", "latent_set")


class Section(NamedTuple):
    title: str
    statement: str
    """One plain sentence: what held and what did not."""
    header: list[str]
    rows: list[list[str]]
    note: str = ""


def _is_num(v: Any) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _f(v: Any, spec: str = ".3f") -> str:
    return format(v, spec) if _is_num(v) else "–"


def _ci(ci: Any, spec: str = ".3f") -> str:
    if isinstance(ci, Sequence) and len(ci) == 2 and all(_is_num(x) for x in ci):
        return f"[{format(ci[0], spec)}, {format(ci[1], spec)}]"
    return "–"


def _p(v: Any) -> str:
    return _f(v, ".4f")


def _tests(persona: Mapping[str, Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    rows = persona.get("summary", {}).get("tests", [])
    return {(r["layer"], r["test"]): r for r in rows}


def _validation(persona: Mapping[str, Any]) -> Section:
    tests = _tests(persona)
    rows, held = [], []
    for lk, layer in persona.get("layers", {}).items():
        for readout in _READOUTS:
            if readout not in layer.get("persona", {}):
                continue
            pooled = layer["persona"][readout]["pooled"]
            holm = tests.get((lk, f"heldout_auroc:{readout}"), {}).get("p_holm")
            rows.append(
                [
                    lk,
                    readout,
                    f"{_f(pooled.get('auroc'))} {_ci(pooled.get('ci95'))}",
                    f"{_f(pooled.get('within_question_auroc'))} {_ci(pooled.get('within_question_ci95'))}",
                    _f(pooled.get("paired_accuracy"), ".2f"),
                    _p(pooled.get("p_label_swap")),
                    _p(holm),
                ]
            )
            if readout == "direction":
                ci = pooled.get("ci95")
                lo = float(ci[0]) if isinstance(ci, Sequence) and ci and _is_num(ci[0]) else math.nan
                h = float(holm) if _is_num(holm) else math.nan
                held.append(h < ALPHA and lo > 0.5)
    aurocs = [r[2].split()[0] for r in rows if r[1] == "direction"]
    statement = (
        f"The persona direction separates misaligned from aligned answers to held-out questions at "
        f"{sum(held)} of {len(held)} layers (Holm p < {ALPHA}, interval above 0.5; pooled AUROC "
        f"{', '.join(aurocs)})."
        if held
        else "No held-out validation in this report."
    )
    if held and not all(held):
        statement += " It did not at the others."
    header = ["layer", "readout", "AUROC [95% CI]", "within question [95% CI]", "paired acc.", "p", "Holm p"]
    note = (
        "Out-of-fold scores: fit on 6 question groups, tested on the other 2; p from within-pair label swaps."
    )
    return Section("Held-out validation", statement, header, rows, note)


def _topic(persona: Mapping[str, Any]) -> Section:
    rows, ratios = [], []
    for lk, layer in persona.get("layers", {}).items():
        for readout in _READOUTS:
            tc = layer.get("persona", {}).get(readout, {}).get("topic_control")
            if not tc:
                continue
            rows.append(
                [
                    lk,
                    readout,
                    _f(tc.get("label_gap_sd"), "+.2f"),
                    _f(tc.get("question_spread_sd"), ".2f"),
                    _f(tc.get("spread_over_gap"), ".2f"),
                    _f(tc.get("question_pair_auroc_mean"), ".2f"),
                ]
            )
            ratios.append(tc.get("spread_over_gap"))
    ok = [r for r in ratios if _is_num(r)]
    if not ratios:
        statement = "No topic control in this report."
    elif ok and max(ok) < 1:
        statement = "The topic control held: every readout separates misaligned from aligned more than it spreads questions apart."
    else:
        bad = [r for r in ok if r >= 1]
        statement = (
            f"The topic control failed for {len(ratios) - len(ok) + len(bad)} of {len(ratios)} readouts: they spread "
            f"questions apart more than they separate misaligned from aligned (spread/gap up to {_f(max(ok, default=math.nan), '.2f')})."
        )
    header = [
        "layer",
        "readout",
        "label gap (sd)",
        "question spread (sd)",
        "spread / gap",
        "question-pair AUROC",
    ]
    note = "Held when spread / gap < 1 (both in units of the pooled within-label SD of the scores)."
    return Section("Topic control", statement, header, rows, note)


def _contrasts(persona: Mapping[str, Any]) -> Section:
    rows, survived = [], []
    for r in persona.get("summary", {}).get("tests", []):
        if r["test"].startswith("heldout_auroc:"):
            continue
        rows.append(
            [
                r["layer"],
                r["test"],
                f"{_f(r.get('value'), '+.4f')} {_ci(r.get('ci95'), '+.3f')}".replace(" –", ""),
                _p(r.get("null_p", r.get("p_vs_random_sets"))),
                _p(r.get("p")),
                _p(r.get("p_holm")),
            ]
        )
        if _is_num(r.get("p_holm")) and r["p_holm"] < ALPHA:
            survived.append(f"{r['test']} at {r['layer']}")
    statement = (
        f"{len(survived)} of {len(rows)} contrasts against the persona survive Holm at {ALPHA}: "
        + "; ".join(survived)
        + ". The others do not."
        if survived
        else f"None of the {len(rows)} contrasts against the persona survives Holm at {ALPHA}."
    )
    header = ["layer", "test", "value [95% CI]", "null p", "p", "Holm p"]
    note = (
        "geometry: decoder-cosine difference, inducing minus control latent set (null p: random latent sets; "
        "p: label-swap permutation). mean_diff: cos(shift, persona) difference (p: bootstrap share <= 0). "
        "paired_medical: bad minus good answer to the same prompt (p: sign flip; null p: random latent sets). "
        "Holm over every persona test and layer."
    )
    return Section("Datasets against the persona", statement, header, rows, note)


def _shift(persona: Mapping[str, Any]) -> Section | None:
    shift = persona.get("shift")
    if not isinstance(shift, Mapping) or not shift.get("layers"):
        return None
    rows, above = [], []
    for lk, layer in shift["layers"].items():
        for probe in ("neutral_prompts", "answers_toxic", "answers_benign"):
            if probe not in layer:
                continue
            arms = [
                layer[probe].get(a, {}).get("projection_share", {}) for a in ("bad_medical", "good_medical")
            ]
            diff = layer[probe].get("inducing_minus_control", {}).get("projection_share", {})
            rows.append(
                [lk, probe]
                + [f"{_f(a.get('mean'), '+.3f')} {_ci(a.get('ci95'), '+.3f')}" for a in arms]
                + [f"{_f(diff.get('mean'), '+.3f')} {_ci(diff.get('ci95'), '+.3f')}"]
            )
            ci = diff.get("ci95")
            if probe == "neutral_prompts" and isinstance(ci, Sequence) and _is_num(ci[0]):
                above.append((lk, ci[0] > 0))
    yes = [lk for lk, ok in above if ok]
    statement = (
        f"On neutral prompts, fine-tuning on bad medical advice moved SmolLM2 further along the persona than good "
        f"medical advice (interval above 0) at {len(yes)} of {len(above)} layers"
        + (f" ({', '.join(yes)})" if yes else "")
        + "."
    )
    header = ["layer", "probe", "bad medical", "good medical", "bad − good [95% CI]"]
    note = (
        f"Share of the persona's misaligned-aligned gap; seeds {shift.get('seeds')}, {shift.get('max_steps')} LoRA "
        "steps; t intervals over seeds. A scale reference, not a calibrated fraction."
    )
    return Section("Shift under fine-tuning", statement, header, rows, note)


def _literature(persona: Mapping[str, Any]) -> list[Section]:
    lit = persona.get("literature_ranking")
    if not isinstance(lit, Mapping):
        return []
    rate_rows = []
    for r in lit.get("rates", []):
        rate_rows.append(
            [
                r["dataset"],
                f"{_f(r.get('rate'), '.3f')} {_ci(r.get('ci95'))}".replace(" –", "")
                if r.get("rate") is not None
                else "unavailable",
                str(r.get("model", "–")),
                str(r.get("source", "–")),
                str(r.get("url", "")),
            ]
        )
        for o in r.get("other_reports", []):
            rate_rows.append(
                [
                    r["dataset"],
                    f"({_f(o['rate'])}, {o['kind']}, not ranked)",
                    o["model"],
                    f"{o['source']}; {o['where']}",
                    o["url"],
                ]
            )
    rates = Section(
        "Literature EM rates (other models)",
        "These are EM rates of other models fine-tuned on each dataset, not SmolLM2's; "
        f"{sum(1 for r in lit.get('rates', []) if r.get('rate') is not None)} of {len(lit.get('rates', []))} "
        "datasets have one.",
        ["dataset", "rate [95% CI]", "model", "source", "address"],
        rate_rows,
        str(lit.get("comparison", "")),
    )
    datasets = [r["dataset"] for r in lit.get("rates", [])]
    rows, sig = [], []
    for lk, layer in lit.get("per_layer", {}).items():
        risk = {r["dataset"]: r.get("risk") for r in layer.get("rows", [])}
        rows.append(
            [lk]
            + [_f(risk.get(d), "+.3f") for d in datasets]
            + [str(layer.get("n")), _f(layer.get("spearman"), "+.2f"), _p(layer.get("p_exact_two_sided"))]
        )
        p = layer.get("p_exact_two_sided")
        sig.append(_is_num(p) and p < ALPHA)
    rhos = ", ".join(_f(layer.get("spearman"), "+.2f") for layer in lit.get("per_layer", {}).values())
    ps = ", ".join(_p(layer.get("p_exact_two_sided")) for layer in lit.get("per_layer", {}).values())
    ns = sorted({int(layer.get("n") or 0) for layer in lit.get("per_layer", {}).values()})
    n_max = max(ns, default=0)
    statement = (
        f"Cross-model: Spearman(risk, literature rate) {rhos} at the {len(sig)} layers (exact two-sided p {ps}); "
        f"significant at {ALPHA} at {sum(sig)} of them, with {'/'.join(map(str, ns))} datasets rated"
    )
    if n_max < 2 or 2 / math.factorial(n_max) >= ALPHA:
        statement += f"; with so few, no ranking could reach p < {ALPHA}."
    else:
        statement += "."
    ranking = Section(
        "Risk score vs literature rates (cross-model)",
        statement,
        ["layer", *[f"risk {d}" for d in datasets], "n rated", "Spearman", "exact p (two-sided)"],
        rows,
        f"Risk: {lit.get('risk_score', '')} Project default risk layer: {lit.get('default_risk_layer')}.",
    )
    return [rates, ranking]


def persona_sections(persona: Mapping[str, Any]) -> list[Section]:
    """The persona section's parts, in reading order (module docstring); the shift only when it ran."""
    sections = [_validation(persona), _topic(persona), _contrasts(persona)]
    shift = _shift(persona)
    if shift is not None:
        sections.append(shift)
    return sections + _literature(persona)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(section: Section, level: int) -> str:
    lines = [f"{'#' * level} {section.title}", "", f"**{section.statement}**", ""]
    if section.rows:
        lines.append("| " + " | ".join(_md_cell(h) for h in section.header) + " |")
        lines.append("|" + "---|" * len(section.header))
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in section.rows]
        lines.append("")
    if section.note:
        lines += [section.note, ""]
    return "\n".join(lines)


def persona_markdown(persona: Mapping[str, Any], level: int = 2) -> str:
    """The persona section as Markdown, headings at ``level``."""
    data = persona.get("data", {})
    intro = (
        f"{'#' * level} EM persona\n\n{data.get('n_pairs', '?')} matched pairs: {data.get('toxic', '?')} vs "
        f"{data.get('benign', '?')} (same question, same answering model).\n"
    )
    return intro + "\n" + "\n".join(_markdown(s, level + 1) for s in persona_sections(persona))


def persona_html(persona: Mapping[str, Any]) -> str:
    """The persona section as HTML (headings ``h2``/``h3``; every cell escaped)."""
    out = ["<h2>EM persona</h2>"]
    for s in persona_sections(persona):
        out.append(f"<h3>{html.escape(s.title)}</h3><p><b>{html.escape(s.statement)}</b></p>")
        if s.rows:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in s.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in s.rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        if s.note:
            out.append(f'<p class="meta">{html.escape(s.note)}</p>')
    return "\n".join(out)


def study_markdown(report: Mapping[str, Any]) -> str:
    """The SmolLM2 study report as Markdown: the geometry tests, then the persona section when present."""
    model = report.get("model", {})
    lines = [
        "# SmolLM2 study",
        "",
        f"Model {model.get('source', '?')} ({model.get('n_layers', '?')} layers); layers analysed "
        f"{report.get('config', {}).get('layers', '?')}. Written from the study's JSON report.",
        "",
        "## Geometry tests",
        "",
    ]
    tests = report.get("summary", {}).get("geometry_tests", [])
    if tests:
        lines += ["| layer | contrast | difference | p (permutation) | Holm p |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['layer']} | {r['contrast']} | {_f(r.get('difference'), '+.4f')} | "
            f"{_p(r.get('p_permutation'))} | {_p(r.get('p_holm'))} |"
            for r in tests
        ]
    else:
        lines.append("No geometry tests in this report.")
    lines.append("")
    persona = report.get("persona")
    if isinstance(persona, Mapping):
        lines.append(persona_markdown(persona))
    return "\n".join(lines)
