"""Sweeps: a grid over any config fields, expanded into one stage graph and run by an executor.

A sweep file names a cell pipeline (``organism``, ``em``, or ``package.module:PIPELINE``), the config of
one cell (``base``, optionally read from ``base_file``), and a ``grid`` of dotted config keys to lists.
``zip`` groups keys that vary together (a model and its SAE). Every combination is one cell::

    name: organism-filters
    pipeline: organism
    base_file: ../organism_cell.yaml        # relative to this file; `base` is merged over it
    base: {eval: {n_per_domain: 50}}
    grid:
      dataset: [insecure_mixed, bad_medical_mixed]
      seed: [0, 1, 2]
      filter.method: [none, random, geometry]
    zip:
      - {filter.fraction: [0.25, 0.5], finetune.steps: [120, 120]}
    resources: {finetune: {num_gpus: 1}}     # per stage; the local executor ignores them

Each cell becomes a small graph of cached stages; identical stages of different cells are merged, so
a dataset is scored once for all seeds and fractions and the organism is trained once. The sweep then
runs on an executor (sequential here, or Ray) and writes into its output folder ``aggregate.parquet``
and ``aggregate.csv`` (one row per cell: grid values, status, metrics), ``nodes.csv`` (one row per
stage run), ``report.html`` (the table, per-factor plots, failed cells with their logs) and
``logs/<stage>/<node>.log``. A rerun computes only what is not finished.

CLI: ``spillover sweep configs/sweeps/organism_tiny.yaml [--executor ray] [--address auto]``.
Python::

    result = run_sweep(load_sweep("configs/sweeps/organism_tiny.yaml"), LocalExecutor())
    result.table                     # pandas DataFrame, one row per cell
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml

from spillover.config import ConfigError, config_hash, deep_merge, from_dict, load_config, to_dict
from spillover.pipeline.executors import Executor, LocalExecutor, NodeResult
from spillover.pipeline.graph import Graph, NodeRef, Resources
from spillover.pipeline.progress_view import ProgressView
from spillover.pipeline.registry import CellPipeline, PlotSpec, get_pipeline, register_pipeline
from spillover.pipeline.sweep_report import write_sweep_report
from spillover.rundir import default_root

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Cell",
    "CellPipeline",
    "PlotSpec",
    "SweepPlan",
    "SweepResult",
    "SweepSpec",
    "aggregate_table",
    "check_sweep",
    "expand_grid",
    "get_pipeline",
    "load_sweep",
    "plan_sweep",
    "register_pipeline",
    "run_sweep",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepSpec:
    """A sweep file."""

    name: str = "sweep"
    """Names the default output folder ``<root>/sweeps/<name>``."""
    pipeline: str = "organism"
    """A registered cell pipeline (``organism``, ``em``) or ``package.module:ATTRIBUTE``."""
    base_file: str | None = None
    """YAML config of one cell, relative to the sweep file; ``base`` is merged over it."""
    base: dict[str, Any] = field(default_factory=dict)
    """Config of one cell (the pipeline's config class)."""
    grid: dict[str, list[Any]] = field(default_factory=dict)
    """Dotted config key -> values; the cells are the product of all keys (and of the zip groups)."""
    zip: list[dict[str, list[Any]]] = field(default_factory=list)
    """Groups of keys whose equally long value lists vary together, each group one factor of the product."""
    resources: dict[str, Resources] = field(default_factory=dict)
    """Stage name -> resources, over the pipeline's defaults (the Ray executor reserves them)."""
    max_retries: int | None = None
    """Extra attempts per failed stage (None: the executor's default)."""
    plots: list[PlotSpec] | None = None
    """Plots for the report (None: the pipeline's defaults)."""

    def __post_init__(self) -> None:
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key} is an empty list; give at least one value")
        seen = set(self.grid)
        for i, group in enumerate(self.zip):
            lengths = {k: len(v) for k, v in group.items()}
            if len(set(lengths.values())) > 1 or not group:
                raise ValueError(f"zip[{i}]: every key needs the same number of values, got {lengths}")
            dup = seen & set(group)
            if dup:
                raise ValueError(
                    f"zip[{i}]: key(s) {sorted(dup)} already vary in the grid or another zip group"
                )
            seen |= set(group)
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")


class Cell(NamedTuple):
    """One point of the grid."""

    id: str
    """Short hash of the cell's factor values."""
    factors: dict[str, Any]
    """Dotted key -> value, in grid order."""
    config: Any
    """The pipeline's config for this cell."""

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.factors.items()) or "(base)"


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read a sweep file; ``overrides`` are dotted ``key=value`` strings (``base.eval.sampling.seed=1``, ``grid.seed=[0,1]``).

    ``base_file`` is resolved against the sweep file's folder and merged under ``base``.
    """
    path = Path(path)
    spec = load_config(SweepSpec, path, overrides)
    if spec.base_file is None:
        return spec
    base_path = (path.parent / spec.base_file).resolve()
    if not base_path.is_file():
        raise ConfigError(f"{path}: base_file {spec.base_file!r} -> {base_path} does not exist")
    loaded = yaml.safe_load(base_path.read_text(encoding="utf-8")) or {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{base_path}: the top level must be a mapping of config keys")
    return SweepSpec(**{**_fields(spec), "base_file": str(base_path), "base": deep_merge(loaded, spec.base)})


def _fields(spec: SweepSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in SweepSpec.__dataclass_fields__}


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"grid key {key!r}: {part!r} is a value ({child!r}), not a section")
        else:
            child = node[part] = dict(child)
        node = child
    node[parts[-1]] = value


def expand_grid(spec: SweepSpec, config_cls: type) -> list[Cell]:
    """Every cell of the grid, validated against ``config_cls`` before anything runs.

    Raises:
        ConfigError: naming the cell and the key when a value does not fit the config.
    """
    factors: list[list[dict[str, Any]]] = [[{key: v} for v in values] for key, values in spec.grid.items()]
    for group in spec.zip:
        n = len(next(iter(group.values())))
        factors.append([{k: group[k][i] for k in group} for i in range(n)])
    cells = []
    for combo in itertools.product(*factors):
        values: dict[str, Any] = {}
        for part in combo:
            values.update(part)
        data: dict[str, Any] = json.loads(json.dumps(spec.base))  # deep copy of plain YAML data
        for key, value in values.items():
            _set_dotted(data, key, value)
        label = " ".join(f"{k}={v}" for k, v in values.items())
        try:
            config: Any = from_dict(config_cls, data)
        except ConfigError as exc:
            raise ConfigError(f"sweep cell [{label}]: {exc}") from exc
        cells.append(Cell(config_hash(values, 10), values, config))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError("two cells of the grid are identical; remove duplicate grid values")
    return cells


class SweepPlan(NamedTuple):
    """A sweep expanded into cells and one merged stage graph."""

    spec: SweepSpec
    pipeline: CellPipeline
    cells: list[Cell]
    graph: Graph
    outputs: dict[str, dict[str, NodeRef]]
    """Cell id -> the named outputs ``build`` returned."""
    groups: dict[str, list[str]]
    """Cell id -> keys of every node the cell needs."""


def plan_sweep(spec: SweepSpec) -> SweepPlan:
    """Expand the grid and build the graph (nothing runs)."""
    pipeline = get_pipeline(spec.pipeline)
    cells = expand_grid(spec, pipeline.config_cls)
    graph = Graph()
    outputs: dict[str, dict[str, NodeRef]] = {}
    groups: dict[str, list[str]] = {}
    for cell in cells:
        outs = pipeline.build(cell.config, graph)
        if "metrics" not in outs:
            raise ValueError(
                f"pipeline {pipeline.name!r} returned no 'metrics' output for cell [{cell.label}]"
            )
        outputs[cell.id] = outs
        keys: dict[str, None] = {}
        for ref in outs.values():
            keys.update(dict.fromkeys(graph.upstream(ref.key)))
        groups[cell.id] = list(keys)
    unknown = sorted(set(spec.resources) - {*graph.stages, *pipeline.resources})
    if unknown:
        raise ConfigError(
            f"resources: no stage of this sweep is named {unknown}; stages: {sorted({*graph.stages, *pipeline.resources})}"
        )
    for stage, res in {**pipeline.resources, **spec.resources}.items():
        graph.set_resources(stage, res)
    return SweepPlan(spec, pipeline, cells, graph, outputs, groups)


def check_sweep(plan: SweepPlan) -> list[str]:
    """What would make cells fail once they run (missing files, unknown judges), found without running.

    Returns one line per problem, naming the first cell that has it and how many more do; empty when the
    pipeline finds none (or has no ``check``).
    """
    if plan.pipeline.check is None:
        return []
    cells_with: dict[str, list[str]] = {}
    for cell in plan.cells:
        for problem in plan.pipeline.check(cell.config):
            cells_with.setdefault(problem, []).append(cell.label)
    return [
        f"{problem} (cell [{labels[0]}]" + (f" and {len(labels) - 1} more)" if len(labels) > 1 else ")")
        for problem, labels in cells_with.items()
    ]


class SweepResult(NamedTuple):
    table: pd.DataFrame
    """One row per cell: ``cell``, the grid values, ``status``, the metrics, ``run_id``."""
    nodes: dict[str, NodeResult]
    out: Path
    """The folder with aggregate.parquet/csv, nodes.csv, report.html and logs/."""
    failed: list[str]
    """Ids of cells that did not finish."""


def _cell_status(plan: SweepPlan, cell_id: str, nodes: Mapping[str, NodeResult]) -> str:
    states = [nodes[k].status if k in nodes else "pending" for k in plan.groups[cell_id]]
    if "failed" in states:
        return "failed"
    if "skipped" in states:
        return "skipped"
    return "done" if all(s == "done" for s in states) else "pending"


def aggregate_table(plan: SweepPlan, nodes: Mapping[str, NodeResult]) -> pd.DataFrame:
    """The sweep's table: one row per cell in grid order.

    Columns: ``cell``, one per grid key, ``status`` (done / failed / skipped / pending), the metrics the
    pipeline reads from the finished folders, ``run_id`` (the metrics folder's content hash, equal for
    equal results wherever they ran), and ``error`` for cells that did not finish.
    """
    import pandas as pd

    rows = []
    for cell in plan.cells:
        row: dict[str, Any] = {"cell": cell.id, **cell.factors}
        status = _cell_status(plan, cell.id, nodes)
        row["status"] = status
        if status == "done":
            folders = {name: nodes[ref.key].path for name, ref in plan.outputs[cell.id].items()}
            metrics = plan.pipeline.row(cell.config, {k: v for k, v in folders.items() if v is not None})
            row.update({k: v for k, v in metrics.items() if k not in cell.factors})  # grid values win
            metrics_dir = folders["metrics"]
            row["run_id"] = metrics_dir.name if metrics_dir is not None else None
        else:
            errors = [
                nodes[k].error for k in plan.groups[cell.id] if k in nodes and nodes[k].status == "failed"
            ]
            row["error"] = errors[0] if errors else None
        rows.append(row)
    table = pd.DataFrame(rows)
    tail = [c for c in ("run_id", "error") if c in table.columns]
    return table[[c for c in table.columns if c not in tail] + tail]


def _nodes_table(plan: SweepPlan, nodes: Mapping[str, NodeResult]) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for node in plan.graph:
        res = nodes.get(node.key)
        rows.append(
            {
                "stage": node.stage,
                "node": node.key,
                "status": res.status if res else "pending",
                "reused": res.reused if res else False,
                "attempts": res.attempts if res else 0,
                "wall_s": round(res.wall_s, 2) if res else None,
                "path": str(res.path) if res and res.path else None,
                "error": res.error if res else None,
                "log": str(res.log) if res else None,
                "cells": sum(node.key in keys for keys in plan.groups.values()),
            }
        )
    return pd.DataFrame(rows)


def run_sweep(
    spec: SweepSpec,
    executor: Executor | None = None,
    *,
    root: str | Path | None = None,
    out: str | Path | None = None,
    live: bool | None = None,
) -> SweepResult:
    """Run (or resume) a sweep and write its table and report.

    Args:
        spec: the sweep (see :func:`load_sweep`).
        executor: where stages run (default: :class:`LocalExecutor` with ``spec.max_retries``; a given
            executor keeps its own ``max_retries``, the CLI passes the sweep file's).
        root: run root of the cached stages (default ``$SPILLOVER_HOME/runs``); shared by all sweeps.
        out: folder for the table, report and logs (default ``<root>/sweeps/<name>``).
        live: draw the live progress table (default: when stderr is a terminal).

    Returns:
        The table, every node's result, the output folder and the failed cells. Failed cells do not
        raise: they are reported in the table, in ``report.html`` and in the log.

    Raises:
        ConfigError: before anything runs, when a cell's config or inputs are wrong (:func:`check_sweep`).
    """
    plan = plan_sweep(spec)
    problems = check_sweep(plan)
    if problems:
        raise ConfigError("the sweep cannot run:\n  " + "\n  ".join(problems))
    root_path = Path(root) if root is not None else default_root()
    out_path = Path(out) if out is not None else root_path / "sweeps" / spec.name
    out_path.mkdir(parents=True, exist_ok=True)
    (out_path / "sweep.json").write_text(json.dumps(to_dict(spec), indent=2, default=str))
    if executor is None:
        executor = LocalExecutor(max_retries=spec.max_retries or 0)
    log.info(
        "sweep %s: %d cells, %d stage runs over stages %s",
        spec.name,
        len(plan.cells),
        len(plan.graph),
        plan.graph.stages,
    )
    view = ProgressView(plan.graph, plan.groups, live=live, title=f"sweep {spec.name}")
    with view:
        nodes = executor.run(plan.graph, root_path, log_dir=out_path / "logs", on_event=view)
    table = aggregate_table(plan, nodes)
    nodes_table = _nodes_table(plan, nodes)
    table.to_csv(out_path / "aggregate.csv", index=False)
    _to_parquet(table, out_path / "aggregate.parquet")
    nodes_table.to_csv(out_path / "nodes.csv", index=False)
    write_sweep_report(plan, table, nodes_table, out_path)
    failed = [c.id for c, s in zip(plan.cells, table["status"], strict=True) if s != "done"]
    log.info("sweep %s: %s; table %s", spec.name, view.summary(), out_path / "aggregate.csv")
    return SweepResult(table, nodes, out_path, failed)


def _to_parquet(table: pd.DataFrame, path: Path) -> None:
    # Grid values can mix types within a column (e.g. a path and None); parquet needs one type per column.
    frame = table.copy()
    for col in frame.columns:
        if frame[col].dtype == object:
            kinds = {
                type(v) for v in frame[col] if v is not None and not (isinstance(v, float) and math.isnan(v))
            }
            if len(kinds) > 1 or kinds & {list, dict, tuple}:
                frame[col] = [
                    None if v is None else json.dumps(v) if isinstance(v, (list, dict, tuple)) else str(v)
                    for v in frame[col]
                ]
    frame.to_parquet(path, index=False)
