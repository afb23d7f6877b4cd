from __future__ import annotations

import copy
from typing import Any

import pytest

from spillover.report.html import render_report
from spillover.report.persona import persona_html, persona_markdown, persona_sections, study_markdown


def _readout(auroc: float, spread_over_gap: float) -> dict[str, Any]:
    return {
        "pooled": {
            "auroc": auroc,
            "ci95": [auroc - 0.05, auroc + 0.05],
            "within_question_auroc": auroc + 0.1,
            "within_question_ci95": [auroc + 0.05, auroc + 0.15],
            "paired_accuracy": 0.7,
            "p_label_swap": 0.001,
        },
        "topic_control": {
            "label_gap_sd": 0.5,
            "question_spread_sd": 0.5 * spread_over_gap,
            "spread_over_gap": spread_over_gap,
            "question_pair_auroc_mean": 0.8,
        },
    }


def make_persona(spread_over_gap: float = 2.0) -> dict[str, Any]:
    """A hand-made persona section (arbitrary test values, not results) with every part."""
    layers = {}
    tests = []
    for lk, auroc, holm in (("layer_6", 0.65, 0.01), ("layer_15", 0.52, 0.6)):
        layers[lk] = {"persona": {r: _readout(auroc, spread_over_gap) for r in ("direction", "latent_set")}}
        tests.append(
            {"layer": lk, "test": "heldout_auroc:direction", "value": auroc, "p": 0.001, "p_holm": holm}
        )
    tests += [
        {
            "layer": "layer_6",
            "test": "geometry:finance__em_persona",
            "value": 0.021,
            "null_p": 0.003,
            "p": 0.001,
            "p_holm": 0.02,
        },
        {
            "layer": "layer_15",
            "test": "mean_diff:medical_pair__em_persona",
            "value": 0.03,
            "ci95": [-0.02, 0.08],
            "p": 0.14,
            "p_holm": 1.0,
        },
    ]
    share = {"mean": 0.09, "ci95": [0.02, 0.15]}
    shift = {
        "seeds": [0, 1, 2],
        "max_steps": 8,
        "layers": {
            "layer_15": {
                "neutral_prompts": {
                    "bad_medical": {"projection_share": {"mean": 0.1, "ci95": [0.05, 0.13]}},
                    "good_medical": {"projection_share": {"mean": 0.01, "ci95": [-0.04, 0.05]}},
                    "inducing_minus_control": {"projection_share": share},
                }
            }
        },
    }
    rows = [
        {"dataset": "bad_medical", "risk": -0.1, "risk_ci95": [-0.2, 0.0], "rate": 0.115},
        {"dataset": "insecure", "risk": -0.05, "risk_ci95": [-0.1, 0.0], "rate": 0.097},
        {"dataset": "jailbroken", "risk": 0.01, "risk_ci95": [-0.1, 0.1], "rate": None},
    ]
    literature = {
        "comparison": "cross-model comparison: SmolLM2 geometry vs other models' EM rates",
        "risk_score": "mean_diff against the persona.",
        "default_risk_layer": "layer_15",
        "rates": [
            {
                "dataset": "bad_medical",
                "rate": 0.115,
                "ci95": [0.107, 0.123],
                "model": "Qwen2.5",
                "source": "em-responses",
                "url": "https://x",
                "other_reports": [],
            },
            {
                "dataset": "insecure",
                "rate": 0.097,
                "ci95": [0.087, 0.108],
                "model": "Qwen2.5-Coder",
                "source": "em-responses",
                "url": "https://x",
                "other_reports": [],
            },
            {
                "dataset": "jailbroken",
                "rate": None,
                "source": "Betley et al. 2025",
                "url": "https://y",
                "other_reports": [],
            },
        ],
        "per_layer": {
            "layer_15": {
                "rows": rows,
                "n": 2,
                "spearman": -1.0,
                "p_exact_two_sided": 1.0,
                "p_exact_greater": 1.0,
            }
        },
    }
    return {
        "data": {"n_pairs": 145, "toxic": "em-responses:misaligned", "benign": "em-responses:aligned"},
        "layers": layers,
        "summary": {"tests": tests},
        "shift": shift,
        "literature_ranking": literature,
    }


def test_markdown_shows_every_persona_part_with_a_plain_statement():
    text = persona_markdown(make_persona())
    for title in (
        "Held-out validation",
        "Topic control",
        "Datasets against the persona",
        "Shift under fine-tuning",
        "Literature EM rates (other models)",
        "Risk score vs literature rates (cross-model)",
    ):
        assert f"### {title}" in text
    assert "0.650 [0.600, 0.700]" in text and "0.0100" in text  # AUROC with interval; Holm p
    assert "at 1 of 2 layers" in text  # layer_15's Holm p 0.6 does not hold
    assert "topic control failed" in text
    assert "geometry:finance__em_persona at layer_6" in text and "1 of 2 contrasts" in text
    assert "+0.090 [+0.020, +0.150]" in text and "at 1 of 1 layers (layer_15)" in text
    assert "unavailable" in text and "Spearman(risk, literature rate) -1.00" in text
    assert "no ranking could reach p < 0.05" in text


def test_statements_follow_the_numbers():
    held = persona_markdown(make_persona(spread_over_gap=0.5))
    assert "The topic control held" in held
    persona = make_persona()
    for row in persona["summary"]["tests"]:
        row["p_holm"] = 1.0
    assert "None of the 2 contrasts against the persona survives Holm" in persona_markdown(persona)


def test_parts_that_did_not_run_are_left_out():
    persona = make_persona()
    persona["shift"] = None
    del persona["literature_ranking"]
    titles = [s.title for s in persona_sections(persona)]
    assert titles == ["Held-out validation", "Topic control", "Datasets against the persona"]


def test_html_escapes_and_study_markdown_without_persona_has_no_persona_section():
    persona = make_persona()
    persona["literature_ranking"]["rates"][0]["model"] = "<b>model</b>"
    out = persona_html(persona)
    assert "&lt;b&gt;model&lt;/b&gt;" in out and "<b>model</b>" not in out
    report = {
        "model": {"source": "smollm2", "n_layers": 30},
        "config": {"layers": [6, 15]},
        "summary": {
            "geometry_tests": [
                {
                    "layer": "layer_6",
                    "contrast": "medical_pair",
                    "difference": 0.004,
                    "p_permutation": 0.3,
                    "p_holm": 1.0,
                }
            ]
        },
        "persona": None,
    }
    plain = study_markdown(report)
    assert "| layer_6 | medical_pair | +0.0040 | 0.3000 | 1.0000 |" in plain and "EM persona" not in plain
    report["persona"] = persona
    assert "## EM persona" in study_markdown(report)


def test_html_report_without_persona_renders_as_before(summary, monkeypatch):
    monkeypatch.setattr("time.strftime", lambda *a: "fixed")
    before = render_report(summary)
    assert "EM persona" not in before
    with_persona = copy.deepcopy(summary)
    with_persona["persona"] = make_persona()
    after = render_report(with_persona)
    assert "<h2>EM persona</h2>" in after
    # The persona section is the only difference.
    assert after.replace("\n" + persona_html(make_persona()), "") == before


@pytest.mark.parametrize("bad", [{"layers": {}}, {}])
def test_an_empty_persona_section_renders_without_error(bad):
    text = persona_markdown(bad)
    assert "No held-out validation" in text and "No topic control" in text
