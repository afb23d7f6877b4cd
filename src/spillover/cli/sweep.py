"""``spillover sweep``: run a grid of cells (model x dataset x seed x filter ...) on this machine or on Ray.

    spillover sweep configs/sweeps/organism_tiny.yaml                     # sequential, in this process
    spillover sweep configs/sweeps/organism_tiny.yaml --plan              # cells and stage runs, no compute
    spillover sweep SWEEP.yaml --executor ray --num-cpus 2                # a private Ray instance (127.0.0.1 only)
    spillover sweep SWEEP.yaml --executor ray --address auto --root /shared/spillover/runs   # a Ray cluster
    spillover sweep SWEEP.yaml --set grid.seed=[0,1,2,3] --set base.eval.n_per_domain=50

A rerun (or a run after an interruption) computes only the unfinished stages. Outputs land in
``--out`` (default ``<root>/sweeps/<name>``): aggregate.parquet/.csv, nodes.csv, report.html, logs/.
Exit status 0 when every cell finished, 1 when some failed (they are listed with their logs).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from spillover.cli._common import fail

if TYPE_CHECKING:
    from spillover.pipeline.executors import Executor

app = typer.Typer(add_completion=False)


@app.command(help="Run a sweep (grid over config fields) through cached stages, locally or on Ray.")
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML (pipeline, base, grid, zip, resources).")],
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Dotted override of the sweep file, e.g. grid.seed=[0,1,2]."),
    ] = None,
    executor: Annotated[str, typer.Option(help="local (sequential, default) or ray.")] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to attach to (auto, host:6379, ray://host:10001); default: a private one."
        ),
    ] = None,
    num_cpus: Annotated[
        int | None, typer.Option(min=1, help="CPUs of the private Ray instance (default: all).")
    ] = None,
    num_gpus: Annotated[
        int | None, typer.Option(min=0, help="GPUs of the private Ray instance (default: detected).")
    ] = None,
    max_retries: Annotated[
        int | None,
        typer.Option(
            min=0, help="Extra attempts per failed stage (default: sweep file, else local 0 / ray 2)."
        ),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(
            help="Run root of the cached stages (default $SPILLOVER_HOME/runs); shared on a cluster."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for the table, report and logs (default <root>/sweeps/<name>)."),
    ] = None,
    plan: Annotated[bool, typer.Option("--plan", help="Print the cells and stage runs, then stop.")] = False,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads of the local executor.")] = 1,
) -> None:
    """Run (or resume) every cell of the sweep and write the aggregate table and report."""
    from spillover.config import ConfigError
    from spillover.pipeline.sweep import check_sweep, load_sweep, plan_sweep, run_sweep

    if executor not in ("local", "ray"):
        raise fail(f"--executor must be local or ray, got {executor!r}")
    for name, folder in (("--root", root), ("--out", out)):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise fail(f"{name} {folder} is a file, not a folder")
    try:
        spec = load_sweep(sweep_file, overrides or [])
        if max_retries is not None:
            from dataclasses import replace

            spec = replace(spec, max_retries=max_retries)
        sweep_plan = plan_sweep(spec)
        problems = check_sweep(sweep_plan)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
    if plan:
        _print_plan(sweep_plan)
        for problem in problems:
            typer.echo(f"warning: would fail: {problem}", err=True)
        return
    if problems:
        raise fail("the sweep cannot run:\n  " + "\n  ".join(problems))
    exe = _executor(executor, address, num_cpus, num_gpus, spec.max_retries, threads)  # type: ignore[arg-type]
    live_handlers = _quiet_console_logging()
    try:
        result = run_sweep(spec, exe, root=root, out=out)
    finally:
        for handler, level in live_handlers:
            handler.setLevel(level)
    _print_result(result)
    if result.failed:
        raise typer.Exit(code=1)


def _executor(
    kind: Literal["local", "ray"],
    address: str | None,
    num_cpus: int | None,
    num_gpus: int | None,
    max_retries: int | None,
    threads: int,
) -> Executor:
    import importlib.util

    from spillover.pipeline.executors import LocalExecutor
    from spillover.pipeline.ray_executor import RayExecutor

    if kind == "local":
        import torch

        torch.set_num_threads(max(1, threads))
        return LocalExecutor(max_retries=max_retries or 0)
    if importlib.util.find_spec("ray") is None:
        raise fail("--executor ray needs Ray: pip install 'spillover[ray]' (or use --executor local)")
    return RayExecutor(
        address, num_cpus=num_cpus, num_gpus=num_gpus, max_retries=2 if max_retries is None else max_retries
    )


def _quiet_console_logging() -> list[tuple[logging.Handler, int]]:
    """While the live table is drawn, console log handlers show warnings only (node logs go to files)."""
    from spillover.progress import enabled

    changed: list[tuple[logging.Handler, int]] = []
    if not enabled():
        return changed
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            changed.append((handler, handler.level))
            handler.setLevel(logging.WARNING)
    return changed


def _print_plan(plan: object) -> None:
    from spillover.pipeline.sweep import SweepPlan

    assert isinstance(plan, SweepPlan)
    console = Console()
    table = Table(title=f"sweep {plan.spec.name}: {len(plan.cells)} cells, pipeline {plan.pipeline.name}")
    table.add_column("cell")
    for key in plan.cells[0].factors if plan.cells else []:
        table.add_column(key)
    table.add_column("stage runs", justify="right")
    for cell in plan.cells:
        table.add_row(cell.id, *(str(v) for v in cell.factors.values()), str(len(plan.groups[cell.id])))
    console.print(table)
    stages = Table(title=f"{len(plan.graph)} stage runs after merging identical stages")
    for col in ("stage", "runs", "cpus", "gpus"):
        stages.add_column(col, justify="left" if col == "stage" else "right")
    for stage in plan.graph.stages:
        nodes = [n for n in plan.graph if n.stage == stage]
        stages.add_row(
            stage, str(len(nodes)), f"{nodes[0].resources.num_cpus:g}", f"{nodes[0].resources.num_gpus:g}"
        )
    console.print(stages)


def _print_result(result: object) -> None:
    from spillover.pipeline.sweep import SweepResult

    assert isinstance(result, SweepResult)
    console = Console()
    counts = result.table["status"].value_counts().to_dict()
    console.print("[bold]cells:[/] " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    for cell_id in result.failed:
        row = result.table[result.table["cell"] == cell_id].iloc[0]
        console.print(f"[red]{row['status']}[/] cell {cell_id}: {row.get('error')}")
    failed_nodes = [r for r in result.nodes.values() if r.status == "failed"]
    for r in failed_nodes:
        console.print(f"  {r.stage} {r.key}: {r.error} (log: {r.log})")
    console.print(
        f"table: {result.out / 'aggregate.csv'} (and .parquet); report: {result.out / 'report.html'}"
    )
