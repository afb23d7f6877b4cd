"""``spillover report RUN_DIR``: the HTML report of a run, from its saved summary.json only.

spillover report runs/demo                  # writes runs/demo/report.html
spillover report runs/demo --out /tmp/r.html
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spillover.cli._common import fail

app = typer.Typer(add_completion=False)


@app.command(help="Write a self-contained HTML report (embedded figures) from a run's summary.json.")
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder holding summary.json (e.g. the demo's --out).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="HTML file (default RUN_DIR/report.html).")
    ] = None,
) -> None:
    """Render the report; plotting reads saved results and never calls a model."""
    from spillover.report.html import write_html_report

    if out is not None and out.is_dir():
        raise fail(f"--out {out} is a folder; give the HTML file to write")
    try:
        path = write_html_report(run_dir, out)
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"wrote {path}")
