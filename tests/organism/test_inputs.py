from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner


@pytest.mark.slow
def test_spillover_geometry_quick_runs_on_the_organism(tmp_path):
    from spillover.cli import app

    result = CliRunner().invoke(
        app,
        [
            "geometry",
            "--quick",
            "--set",
            "geometry.n_null=100",
            "--set",
            "geometry.n_permutations=500",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "geometry.json").read_text())
    assert {
        "insecure",
        "secure",
        "edu_insecure",
        "bad_medical",
        "good_medical",
        "risky_finance",
        "safe_finance",
    } <= set(report["datasets"])
    assert (
        report["datasets"]["insecure"]["role"] == "inducing"
        and report["datasets"]["secure"]["role"] == "control"
    )
    assert ["insecure", "secure"] in report["pairs"]
    for layer in report["layers"].values():
        assert layer["toxic_features"] and "comparison" in layer
        assert all(entry["features"] for entry in layer["datasets"].values())
