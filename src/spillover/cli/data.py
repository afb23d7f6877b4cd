"""``spillover data fetch | import | list``: get the registry's datasets and see what is on disk.

spillover data fetch em/insecure em/first_plot_questions
spillover data fetch --all
spillover data import DIR          # an offline copy laid out like the data home (files may be .gz)
spillover data list
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from spillover.cli._common import fail

__all__ = ["data_fetch", "data_import", "data_list"]

console = Console()


def data_fetch(
    names: Annotated[
        list[str] | None, typer.Argument(help="Registry names (see `spillover data list`).")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dataset that has an upstream URL.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Download again even when present.")] = False,
) -> None:
    """Download datasets into $SPILLOVER_HOME/data, verified against their pinned sha256 (resumable)."""
    from spillover.data.fetch import ChecksumError, DownloadError, fetch
    from spillover.data.registry import DATASETS

    if all_ == bool(names):
        raise fail("give dataset names or --all (not both)")
    unknown = [n for n in names or [] if n not in DATASETS]
    if unknown:
        raise fail(f"not in the registry: {unknown}; see `spillover data list`")
    chosen = [n for n, d in DATASETS.items() if d.url is not None] if all_ else list(names or [])
    failed = []
    for name in chosen:
        try:
            console.print(f"{name}: {fetch(name, force=force)}")
        except (DownloadError, ChecksumError) as exc:
            console.print(f"[red]{exc}[/]")
            failed.append(name)
    if all_:
        skipped = sorted(n for n, d in DATASETS.items() if d.url is None)
        console.print(f"no public download (use `spillover data import DIR`): {', '.join(skipped)}")
    if failed:
        raise fail(f"failed: {failed}")


def data_import(
    source: Annotated[Path, typer.Argument(help="Folder laid out like the data home (em/..., .gz allowed).")],
) -> None:
    """Register an offline copy: verify each registry file found in SOURCE and copy it into the data home."""
    from spillover.data.fetch import ChecksumError, data_home, import_dir

    try:
        imported = import_dir(source)
    except (FileNotFoundError, ChecksumError) as exc:
        raise fail(str(exc)) from exc
    console.print(f"imported {len(imported)} datasets into {data_home()} (see `spillover data list`)")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def data_list() -> None:
    """Every registered dataset: whether it is present, its size, licence and description."""
    from spillover.data.fetch import data_home, dataset_status

    table = Table(title=f"datasets in {data_home()}")
    for col in ("name", "present", "size", "source", "licence", "description"):
        table.add_column(col)
    for row in dataset_status():
        ds = row.dataset
        table.add_row(
            ds.name,
            "yes" if row.path else "no",
            _size(row.size),
            "url" if ds.url else "import",
            ds.licence,
            ds.description,
        )
    console.print(table)
