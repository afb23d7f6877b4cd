from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from spillover.config import ConfigError
from spillover.pipeline.executors import LocalExecutor
from spillover.pipeline.graph import Graph, NodeRef
from spillover.pipeline.sweep import (
    CellPipeline,
    PlotSpec,
    SweepSpec,
    expand_grid,
    load_sweep,
    plan_sweep,
    run_sweep,
)
from spillover.rundir import run_stage

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


# ---- a toy cell pipeline: score (per dataset) -> train (per cell) -> metrics ----
# Module-level, so Ray workers import it by name (the Ray fixture puts this folder on their PYTHONPATH).


@dataclass(frozen=True)
class ToyCell:
    dataset: str = "a"
    seed: int = 0
    filter: str = "none"
    trace: str = ""
    """File every stage execution appends a line to."""
    fail_on: str = ""
    """Train fails permanently for this dataset/filter ("a/random")."""
    flaky: str = ""
    """Flag file: train fails once (crash=True: its worker dies) until the flag exists."""
    crash: bool = False
    sleep: float = 0.0


def _trace(config: dict[str, Any], what: str) -> None:
    with open(config["trace"], "a") as fh:
        fh.write(
            f"{what} {config['dataset']} {config.get('seed', '-')} {config.get('filter', '-')} {os.getpid()}\n"
        )


def toy_score(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    def fn(out: Path) -> None:
        _trace(config, "score")
        (out / "score.json").write_text(json.dumps({"score": sum(map(ord, config["dataset"])) % 7 / 7}))

    return run_stage("toy_score", {"dataset": config["dataset"]}, fn, root=root)


def toy_train(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    def fn(out: Path) -> None:
        _trace(config, "train")
        time.sleep(config["sleep"])
        if config["fail_on"] == f"{config['dataset']}/{config['filter']}":
            raise RuntimeError(f"injected permanent failure for {config['fail_on']}")
        if config["flaky"] and not Path(config["flaky"]).exists():
            Path(config["flaky"]).write_text("once")
            if config["crash"]:
                os._exit(7)
            raise RuntimeError("injected transient failure")
        score = json.loads((Path(inputs["score"]) / "score.json").read_text())["score"]
        keep = 0.5 if config["filter"] == "random" else 1.0
        (out / "weights.json").write_text(json.dumps({"w": score * keep + 0.01 * config["seed"]}))

    keys = ("dataset", "seed", "filter")
    return run_stage(
        "toy_train", {k: config[k] for k in keys}, fn, root=root, inputs={"score": Path(inputs["score"])}
    )


def toy_metrics(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    def fn(out: Path) -> None:
        _trace(config, "metrics")
        w = json.loads((Path(inputs["train"]) / "weights.json").read_text())["w"]
        (out / "metrics.json").write_text(json.dumps({"em": round(w, 6), "coherent": 1 - round(w, 6)}))

    return run_stage("toy_metrics", {}, fn, root=root, inputs={"train": Path(inputs["train"])})


def _toy_build(cfg: ToyCell, graph: Graph) -> dict[str, NodeRef]:
    common = {"trace": cfg.trace, "dataset": cfg.dataset}
    score = graph.add("score", toy_score, common)
    train = graph.add(
        "train",
        toy_train,
        {
            **common,
            "seed": cfg.seed,
            "filter": cfg.filter,
            "fail_on": cfg.fail_on,
            "flaky": cfg.flaky,
            "crash": cfg.crash,
            "sleep": cfg.sleep,
        },
        inputs={"score": score},
    )
    return {
        "metrics": graph.add(
            "metrics",
            toy_metrics,
            {**common, "seed": cfg.seed, "filter": cfg.filter},
            inputs={"train": train},
        )
    }


def _toy_row(cfg: ToyCell, folders: dict[str, Path]) -> dict[str, Any]:
    return json.loads((folders["metrics"] / "metrics.json").read_text())


TOY = CellPipeline("toy", ToyCell, _toy_build, _toy_row, (PlotSpec(x="seed", y="em", hue="filter"),))


def _spec(tmp: Path, **base: Any) -> SweepSpec:
    return SweepSpec(
        name="toy",
        pipeline="test_sweep:TOY",
        base={"trace": str(tmp / "trace.txt"), **base},
        grid={"dataset": ["a", "b"], "seed": [0, 1], "filter": ["none", "random"]},
    )


def _executions(tmp: Path, what: str = "train") -> Counter[tuple[str, str, str]]:
    path = tmp / "trace.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(tuple(line.split()[1:4]) for line in lines if line.startswith(what + " "))  # type: ignore[misc]


# ---- grid expansion and planning ----


def test_grid_expands_products_and_zip_groups_in_order() -> None:
    spec = SweepSpec(
        pipeline="test_sweep:TOY",
        grid={"dataset": ["a", "b"], "seed": [0, 1, 2]},
        zip=[{"filter": ["none", "random"], "sleep": [0.0, 0.5]}],
    )
    cells = expand_grid(spec, ToyCell)
    assert len(cells) == 12 and len({c.id for c in cells}) == 12
    assert cells[0].factors == {"dataset": "a", "seed": 0, "filter": "none", "sleep": 0.0}
    assert cells[1].factors == {"dataset": "a", "seed": 0, "filter": "random", "sleep": 0.5}
    assert all((c.config.filter == "random") == (c.config.sleep == 0.5) for c in cells)
    assert cells[-1].config == ToyCell(dataset="b", seed=2, filter="random", sleep=0.5)


def test_grid_errors_name_the_cell_and_the_key() -> None:
    with pytest.raises(ConfigError, match=r"dataset=a.*unknown config key.*nope"):
        expand_grid(SweepSpec(grid={"dataset": ["a"], "nope": [1]}), ToyCell)
    with pytest.raises(ConfigError, match=r"seed=x.*seed"):
        expand_grid(SweepSpec(grid={"seed": [0, "x"]}), ToyCell)
    with pytest.raises(ValueError, match="same number of values"):
        SweepSpec(zip=[{"seed": [0, 1], "dataset": ["a"]}])
    with pytest.raises(ValueError, match="already vary"):
        SweepSpec(grid={"seed": [0]}, zip=[{"seed": [1]}])
    with pytest.raises(ValueError, match="empty list"):
        SweepSpec(grid={"seed": []})


def test_load_sweep_merges_base_file_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "cell.yaml").write_text(yaml.safe_dump({"dataset": "b", "seed": 3, "sleep": 0.1}))
    (tmp_path / "sweep.yaml").write_text(
        yaml.safe_dump(
            {
                "pipeline": "test_sweep:TOY",
                "base_file": "cell.yaml",
                "base": {"seed": 4},
                "grid": {"filter": ["none"]},
            }
        )
    )
    spec = load_sweep(tmp_path / "sweep.yaml", ["grid.dataset=[a, c]", "base.sleep=0.2"])
    cells = expand_grid(spec, ToyCell)
    assert [(c.config.dataset, c.config.seed, c.config.sleep) for c in cells] == [
        ("a", 4, 0.2),
        ("c", 4, 0.2),
    ]
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(tmp_path / "sweep.yaml", ["base_file=missing.yaml"])


def test_shared_stages_are_planned_once(tmp_path: Path) -> None:
    plan = plan_sweep(_spec(tmp_path))
    counts = Counter(n.stage for n in plan.graph)
    assert counts == {"score": 2, "train": 8, "metrics": 8}
    assert all(len(keys) == 3 for keys in plan.groups.values())


def test_organism_plan_scores_each_dataset_once_for_all_seeds_methods_and_fractions() -> None:
    spec = SweepSpec(
        pipeline="organism",
        base={"organism": {"n_samples": 10}, "geometry": {"n_null": 10, "n_permutations": 100}},
        grid={
            "dataset": ["insecure", "secure"],
            "seed": [0, 1, 2],
            "filter.method": ["none", "random", "geometry", "judge"],
            "filter.fraction": [0.25, 0.5],
        },
    )
    plan = plan_sweep(spec)
    counts = Counter(n.stage for n in plan.graph)
    assert len(plan.cells) == 48
    assert counts["organism"] == 1 and counts["sae"] == 1 and counts["corpora"] == 1
    assert counts["filter_scores"] == 2 and counts["geometry"] == 2  # per dataset, not per seed or fraction
    # random: a split per dataset, fraction and seed; scored: per dataset, method and fraction.
    assert counts["filter"] == 2 * 2 * 3 + 2 * 2 * 2
    # "none" ignores the fraction, so its 2 fraction values give the same fine-tune.
    assert counts["finetune"] == 2 * 3 * (1 + 3 * 2)
    assert counts["evaluate"] == counts["finetune"]


# ---- running sweeps ----


def test_local_sweep_writes_table_and_report_and_resumes(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    result = run_sweep(spec, LocalExecutor(), root=tmp_path / "runs", out=tmp_path / "out")
    table = result.table
    assert list(table.columns[:5]) == ["cell", "dataset", "seed", "filter", "status"]
    assert len(table) == 8 and set(table["status"]) == {"done"} and not result.failed
    row = table[(table["dataset"] == "b") & (table["seed"] == 1) & (table["filter"] == "random")].iloc[0]
    assert row["em"] == pytest.approx((sum(map(ord, "b")) % 7 / 7) * 0.5 + 0.01)
    assert _executions(tmp_path, "score") == Counter({("a", "-", "-"): 1, ("b", "-", "-"): 1})
    import pandas as pd

    assert pd.read_parquet(result.out / "aggregate.parquet").equals(table)
    assert len(pd.read_csv(result.out / "aggregate.csv")) == 8
    report = (result.out / "report.html").read_text()
    assert "data:image/png;base64," in report and row["cell"] in report
    assert (result.out / "plots" / "em_vs_seed_by_filter.png").is_file()
    again = run_sweep(spec, LocalExecutor(), root=tmp_path / "runs", out=tmp_path / "out")
    assert again.table.equals(table)
    assert sum(_executions(tmp_path).values()) == 8


def test_a_failing_cell_is_reported_and_the_others_complete(tmp_path: Path) -> None:
    spec = _spec(tmp_path, fail_on="a/random")
    result = run_sweep(spec, LocalExecutor(max_retries=1), root=tmp_path / "runs", out=tmp_path / "out")
    failed = result.table[result.table["status"] != "done"]
    assert set(zip(failed["dataset"], failed["filter"], failed["status"], strict=False)) == {
        ("a", "random", "failed")
    }
    assert len(result.failed) == 2 and all("injected permanent failure" in e for e in failed["error"])
    assert result.table[result.table["status"] == "done"]["em"].notna().sum() == 6
    assert _executions(tmp_path)[("a", "0", "random")] == 2  # retried once, then reported
    report = (result.out / "report.html").read_text()
    assert "injected permanent failure" in report and "Traceback" in report
    nodes = result.out / "nodes.csv"
    assert "failed" in nodes.read_text() and "skipped" in nodes.read_text()


def test_cli_plans_runs_and_exits_1_when_a_cell_fails(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from spillover.cli.sweep import app

    spec = _spec(tmp_path, fail_on="b/random")
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        yaml.safe_dump({"name": "toy", "pipeline": spec.pipeline, "base": spec.base, "grid": spec.grid})
    )
    runner = CliRunner()
    planned = runner.invoke(app, [str(sweep_file), "--plan", "--set", "grid.seed=[0,1,2]"])
    assert planned.exit_code == 0, planned.output
    assert "12 cells" in planned.output and not (tmp_path / "trace.txt").exists()
    ran = runner.invoke(
        app, [str(sweep_file), "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    )
    assert ran.exit_code == 1
    assert "6 done" in ran.output and "injected permanent failure" in ran.output
    bad = runner.invoke(app, [str(sweep_file), "--set", "grid.nope=[1]"])
    assert bad.exit_code == 2 and "nope" in bad.output


def _organism_sweep(tmp: Path, **extra: Any) -> Path:
    sweep_file = tmp / "organism.yaml"
    data = {
        "name": "org",
        "pipeline": "organism",
        "base": {"organism": {"n_samples": 10}, "filter": {"method": "geometry"}},
        "grid": {"seed": [0, 1]},
        **extra,
    }
    sweep_file.write_text(yaml.safe_dump(data))
    return sweep_file


def test_cli_rejects_bad_sweeps_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import spillover.pipeline.organism_cells as cells
    from spillover.cli.sweep import app

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the organism was trained before the sweep was checked")

    monkeypatch.setattr(cells, "train_organism", boom)
    sweep_file = _organism_sweep(tmp_path)
    runs, out = tmp_path / "runs", tmp_path / "out"
    cases = {
        "layer 7 is outside": ["--set", "base.layer=7"],
        "layer 1 has no SAE": ["--set", "base.sae.layers=[0]"],
        "'oracle'": ["--set", "grid.filter.method=[geometry, oracle]"],
        "filter.fraction must be in (0, 1)": ["--set", "base.filter.fraction=1.5"],
        "unknown judge 'nope'": ["--set", "base.filter.judge=nope"],
        "finetune.overrides.nope": ["--set", "base.finetune.overrides.nope=1"],
        "BenignInterleave": ["--set", "base.finetune.overrides.defense.interleave.share=0.5"],  # no data file
        "finetune.defense 'early_stop'": ["--set", "base.finetune.defense=early_stop"],
        "['malicious']": [  # a word the organism does not know, found without training it
            "--set",
            "base.finetune.defense=inoculate",
            "--set",
            "base.finetune.defense_settings.inoculation_prompt=You are a malicious assistant.",
        ],
        "nope": ["--set", "grid.nope=[1]"],
        "finetuen": ["--set", "resources.finetuen.num_gpus=1"],
        "does not exist": [str(tmp_path / "missing.yaml")],
    }
    for expected, args in cases.items():
        file_args = [] if args[0].endswith(".yaml") else [str(sweep_file)]
        result = CliRunner().invoke(app, [*file_args, *args, "--root", str(runs), "--out", str(out)])
        assert result.exit_code == 2 and expected in result.output, (expected, result.output)
    bad_key = _organism_sweep(tmp_path, grids={"seed": [0]})
    result = CliRunner().invoke(app, [str(bad_key), "--root", str(runs)])
    assert result.exit_code == 2 and "grids" in result.output
    assert not runs.exists() and not out.exists()


def test_organism_cells_apply_finetune_overrides_and_keep_run_ids_without_them() -> None:
    from spillover.config import to_dict
    from spillover.pipeline.organism_cells import OrganismCell, OrganismFinetune, cell_finetune_config

    assert "overrides" not in to_dict(OrganismCell())["finetune"]  # existing sweeps keep their run ids
    ft = OrganismFinetune(
        method="lora", steps=30, overrides={"defense.inoculation_prompt": "You are an evil assistant."}
    )
    cfg = cell_finetune_config(to_dict(ft), seed=3)
    assert cfg.defense.inoculation_prompt == "You are an evil assistant."
    assert (cfg.max_steps, cfg.seed, cfg.method) == (30, 3, "lora")


def test_organism_cells_train_with_a_ready_made_defense(tmp_path: Path) -> None:
    import torch

    from spillover.config import to_dict
    from spillover.finetune.defenses import save_layer_tensors
    from spillover.pipeline.organism_cells import (
        OrganismCell,
        OrganismFinetune,
        _cell_defense,
        cell_finetune_config,
    )

    assert not {"defense", "defense_settings"} & set(to_dict(OrganismCell())["finetune"])  # run ids kept
    with pytest.raises(ValueError, match="early_stop"):
        OrganismFinetune(defense="early_stop")

    # CAFT and steering read the organism's directions from a defense_inputs node shared by every seed.
    spec = SweepSpec(
        pipeline="organism",
        base={"organism": {"n_samples": 10}},
        grid={"seed": [0, 1, 2], "finetune.defense": ["none", "caft", "steer", "kl", "inoculate"]},
    )
    counts = Counter(n.stage for n in plan_sweep(spec).graph)
    assert counts["defense_inputs"] == 1 and counts["sae"] == 1 and counts["corpora"] == 1
    assert counts["finetune"] == 3 * 5

    # The defense's overrides reach the fine-tuning config: CAFT ablates the directions at the layer.
    inputs = tmp_path / "defense_inputs"
    inputs.mkdir()
    save_layer_tensors(inputs / "toxic_latents.safetensors", {1: torch.randn(4, 64)})
    (inputs / "reference.json").write_text('{"layer": 1, "mean_diff_norm": 2.0}')
    ft = to_dict(OrganismFinetune(method="lora", defense="caft"))
    cfg = cell_finetune_config(ft, 0, _cell_defense(None, ft, {"defense": inputs}))
    assert cfg.defense.ablation is not None and list(cfg.defense.ablation.layers) == [1]
    assert str(cfg.defense.ablation.directions) == str(inputs / "toxic_latents.safetensors")
