from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from spillover.config import to_dict
from spillover.theory.experiment import DEFINITION
from spillover.theory.report import plot_theory
from spillover.theory.run import TheoryConfig, run_theory
from spillover.theory.toy import ToyConfig

TINY = {
    "toy": {"n_features": 12, "d_hidden": 4, "steps": 400, "lr": 0.01, "batch_size": 512},
    "seeds": [0, 1],
    "n_targets": 2,
    "random_draws": 20,
    "step_lrs": [0.01, 1.0],
    "step_counts": [1, 20],
    "variants": ["upstream/target/sgd", "tied/target/sgd"],
    "sweep_p": [0.05],
    "sweep_ratio": [1.0, 3.0],
    "sweep_targets": 2,
}


def _overrides(d: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in d.items():
        if isinstance(value, dict):
            out += _overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


@pytest.fixture(scope="module")
def results() -> dict:
    from spillover.config import load_config

    return run_theory(load_config(TheoryConfig, TINY))


def test_run_theory_reports_the_headline_numbers_and_controls(results: dict):
    for key in (
        "pearson_r",
        "spearman_r",
        "slope",
        "control_orthogonal_max_abs_spillover",
        "control_random_direction_r",
    ):
        assert isinstance(results[key], float), key
    assert results["definition"] == DEFINITION
    assert len(results["per_seed"]) == 2 and all(len(s["targets"]) == 2 for s in results["per_seed"])
    assert results["pearson_r"] > 0.9
    assert results["typical_abs_spillover"] > results["control_orthogonal_max_abs_spillover"]
    assert abs(results["control_random_direction_r"]) < 0.5 * results["pearson_r"]
    assert {row["name"] for row in results["variants"]} == {"upstream/target/sgd", "tied/target/sgd"}
    assert {(row["p_active"], row["n_over_d"]) for row in results["sweep"]} == {(0.05, 1.0), (0.05, 3.0)}
    small = next(r for r in results["step_scaling"] if r["lr"] == 0.01 and r["steps"] == 1)
    assert small["analytic_slope"] == pytest.approx(1.0, abs=0.1)
    json.dumps(to_dict(results), allow_nan=False)


def test_plot_is_written_from_saved_results(results: dict, tmp_path):
    saved = json.loads(json.dumps(to_dict(results)))
    png = plot_theory(saved, tmp_path / "theory.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_writes_theory_json_and_png(tmp_path):
    from spillover.cli import app

    out = tmp_path / "out"
    args = ["theory", "--out", str(out)]
    for item in _overrides(TINY | {"seeds": [0], "variants": ["upstream/target/sgd"], "sweep_ratio": [2.0]}):
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "theory.json").read_text())
    assert data["n_seeds"] == 1 and data["config"]["toy"]["n_features"] == 12
    assert (out / "theory.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["theory", "--out", str(out), "--set", "toy.nope=1"])
    assert bad.exit_code == 2


def test_quick_config_is_valid_and_smaller_than_the_default():
    quick, full = TheoryConfig.quick(), TheoryConfig()
    assert len(quick.seeds) >= 3
    assert quick.toy.steps <= full.toy.steps and len(quick.sweep_p) <= len(full.sweep_p)
    with pytest.raises(ValueError, match="variants"):
        TheoryConfig(variants=("lora/target/sgd",))
    assert isinstance(full.toy, ToyConfig)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--set", "step_lrs=[0.1, 0]"], "step_lrs must be > 0"),
        (["--set", "step_counts=[0]"], "step_counts >= 1"),
        (["--set", "variant_lr_adam=0"], "variant_lr_adam must be > 0"),
        (["--set", "finetune.lr=-1"], "lr > 0"),
        (["--config", "MISSING"], "does not exist"),
        (["--config", "BADYAML"], "not valid YAML"),
        (["--out", "AFILE"], "is not a folder"),
    ],
)
def test_bad_inputs_fail_before_any_toy_trains(args, named, tmp_path, monkeypatch):
    from spillover.cli import app

    def boom(*a, **k):
        raise AssertionError("the experiment ran before its inputs were checked")

    monkeypatch.setattr("spillover.theory.run.run_theory", boom)
    (tmp_path / "bad.yaml").write_text("toy: [unclosed\n")
    (tmp_path / "file").write_text("")
    where = {"MISSING": tmp_path / "none.yaml", "BADYAML": tmp_path / "bad.yaml", "AFILE": tmp_path / "file"}
    args = [str(where.get(a, a)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, ["theory", *args])
    assert result.exit_code == 2, (result.output, result.exception)
    assert named in result.output
