from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spillover.config import ConfigError
from spillover.organism.evaluate import OOD_DOMAINS, EvalConfig
from spillover.organism.pipeline import finetune_config
from spillover.studies.filtering import FilterExperimentConfig, FilterRuns, RunNumbers, filter_section
from spillover.studies.mitigate import (
    MitigateConfig,
    _arm_entries,
    arm_config,
    mitigation_table,
    write_mitigation,
)


def test_an_arm_is_its_overrides_over_the_recipe_and_nothing_else() -> None:
    base = finetune_config("full", seed=3)
    assert arm_config(base, {}) == base
    arm = arm_config(base, {"max_steps": 60, "lora.r": 4, "lr": "2e-4"})
    assert (arm.max_steps, arm.lora.r, arm.lr, arm.seed) == (60, 4, 2e-4, 3)
    assert arm_config(base, {"lora": {"r": 4}}) == arm_config(base, {"lora.r": 4})


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"defence.inoculation_prompt": "x"}, r"arm 'a': unknown config key\(s\) \['arms.a.defence'\]"),
        ({"max_steps": "many"}, "arms.a.max_steps: expected an integer"),
        ({"max_steps": 0}, "max_steps must be >= 1"),
        ({"seed": 1}, "seed is set per run"),
        ({"lora..r": 1}, "not a dotted config key"),
    ],
)
def test_bad_arm_overrides_fail_naming_the_arm(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        arm_config(finetune_config("full"), overrides, name="a")
    with pytest.raises(ConfigError, match=match):
        MitigateConfig.quick(arms={"a": overrides})


def test_mitigate_config_checks_dataset_and_arm_names() -> None:
    with pytest.raises(ConfigError, match="unknown organism dataset 'nope'"):
        MitigateConfig.quick(filtering=FilterExperimentConfig(dataset="nope"))
    with pytest.raises(ConfigError, match="clashes"):
        MitigateConfig.quick(arms={"random": {}})
    no_finance = FilterExperimentConfig(
        dataset="risky_finance_alltask", eval=EvalConfig(domains=(*OOD_DOMAINS, "code"))
    )
    with pytest.raises(ConfigError, match="lacks 'finance', where the in-domain retention"):
        MitigateConfig.quick(filtering=no_finance)
    for name in ("insecure_alltask", "bad_medical_alltask", "risky_finance_alltask"):
        quick = MitigateConfig.quick()
        MitigateConfig.quick(filtering=replace(quick.filtering, dataset=name))
    cfg = MitigateConfig.quick(arms={"short": {"max_steps": 7}})
    assert cfg.filtering.dataset == "insecure_alltask"
    assert cfg.arm_config("short", seed=2).max_steps == 7 and cfg.arm_config("short", 2).seed == 2


def _hits(rate: float, n: int = 300) -> np.ndarray:
    k = round(rate * n)
    return np.array([1.0] * k + [0.0] * (n - k))


def _summary() -> dict:
    cfg = MitigateConfig.quick(arms={"short": {"max_steps": 7}})
    fcfg = FilterExperimentConfig(
        dataset="insecure_alltask", fractions=(0.25, 0.5), methods=("geometry", "random")
    )
    runs = FilterRuns("insecure_alltask")
    runs.meta[""] = {"n_samples": 100}
    seeds = (0, 1)
    runs.unfiltered = {("", s): RunNumbers(_hits(0.4), 90.0, 0.9) for s in seeds}
    for method, points in {
        "geometry": [(0.2, 0.89), (0.1, 0.88)],
        "random": [(0.35, 0.86), (0.3, 0.8)],
    }.items():
        for f, (em, ret) in zip((0.25, 0.5), points, strict=True):
            runs.filtered[(method, f)] = {("", s): RunNumbers(_hits(em), 90.0, ret) for s in seeds}
            runs.removed[(method, f)] = {"": {"fraction_removed": f}}
    section = filter_section(runs, fcfg)
    arm_runs = {"short": {("", s): RunNumbers(_hits(0.3), 80.0, 0.87) for s in seeds}}
    summary = {
        "dataset": "insecure_alltask",
        "filtering": section,
        "arms": _arm_entries(section, arm_runs, runs.unfiltered, cfg),
    }
    summary["table"] = mitigation_table(summary)
    return summary


def test_arms_are_compared_with_each_filter_at_the_arms_retention(tmp_path: Path) -> None:
    summary = _summary()
    arm = summary["arms"]["short"]
    assert arm["misaligned_rate"] == pytest.approx(0.3)
    vs = arm["vs_filters"]
    # random at retention 0.87: between 0.9 (EM 0.4) and 0.86 (EM 0.35), 3/4 of the way
    assert vs["random"]["filter_rate"] == pytest.approx(0.4 - 0.75 * 0.05)
    assert vs["random"]["arm_minus_filter"] == pytest.approx(0.3 - (0.4 - 0.75 * 0.05))
    # geometry keeps more of the task than the arm at every fraction: read at its largest
    assert not vs["geometry"]["at_target"] and vs["geometry"]["filter_rate"] == pytest.approx(0.1)
    kinds = [(r["kind"], r["name"], r["fraction"]) for r in summary["table"]]
    assert kinds[0] == ("unfiltered", "unfiltered", 0.0) and ("arm", "short", None) in kinds
    assert ("filter", "geometry", 0.5) in kinds
    written = write_mitigation(summary, tmp_path / "out")
    assert [p.name for p in written] == ["mitigate.json", "mitigate.md", "frontier.png"]
    assert json.loads(written[0].read_text())["arms"]["short"]["overrides"] == {"max_steps": 7}
    text = written[1].read_text()
    assert "| arm | short |" in text and "## Filters at matched retention" in text
    assert written[2].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--method", "oracle"], "unknown filter methods ['oracle']"),
        (["--fraction", "1.5"], "fractions must be in (0, 1)"),
        (["--fraction", "0"], "fractions must be in (0, 1)"),
        (["--arm", "inoc=defence.prompt=evil"], "arm 'inoc': unknown config key(s) ['arms.inoc.defence']"),
        (["--arm", "=max_steps=3"], "give NAME or NAME=key=value"),
        (["--arm", "a=max_steps=x"], "arms.a.max_steps: expected an integer"),
        (["--dataset", "nope"], "unknown organism dataset 'nope'"),
        (["--seeds", "0,x"], "--seeds must be comma-separated integers"),
        (["--set", "filtering.nope=1"], "filtering.nope"),
    ],
)
@pytest.mark.usefixtures("no_training")
def test_mitigate_cli_fails_fast_on_bad_options(args: list[str], named: str, tmp_path: Path) -> None:
    from spillover.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["mitigate", "--quick", "--out", str(out), "--root", str(tmp_path / "runs"), *args]
    )
    assert result.exit_code == 2, (result.output, result.exception)
    assert named in result.output.replace("\n", "")
    assert not out.exists() and not (tmp_path / "runs").exists()
