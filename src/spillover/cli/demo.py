"""``spillover demo``: the whole story on the built-in model organism (see ``spillover.studies.demo``).

spillover demo --out runs/demo              # every stage, cached
spillover demo --quick --out runs/quick     # a tiny organism: a first look
spillover demo --seeds 0,1                  # more fine-tuning seeds (tighter intervals)
spillover demo --organisms 0                # one shipped organism (a faster, looser look)
spillover demo --retrain                    # train the organisms from scratch instead of installing them
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from spillover.cli._common import fail
from spillover.studies.demo import DemoConfig, print_summary, run_demo

MAX_DEFAULT_WORKERS = 8
"""More one-thread workers than this rarely pay: the default demo is ~40 jobs, and its longest chain
(geometry, filter scores, one fine-tune) takes ~35 s however many run beside it."""


def default_workers() -> int:
    """The CPUs this process may use (its affinity, else the machine's count), at most ``MAX_DEFAULT_WORKERS``."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_DEFAULT_WORKERS))


app = typer.Typer(add_completion=False)


@app.command(
    help="The whole story on the built-in model organism: induce, measure, explain, mitigate (summary.json + report.html)."
)
def demo(
    quick: Annotated[
        bool,
        typer.Option("--quick", help="A tiny organism, trained on the spot: a first look in about a minute."),
    ] = False,
    out: Annotated[Path, typer.Option("--out", help="Folder for summary.json and report.html.")] = Path(
        "spillover-demo"
    ),
    root: Annotated[
        Path | None,
        typer.Option("--root", help="Cache of stage run directories (default $SPILLOVER_HOME/runs)."),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds",
            help="Comma-separated fine-tuning seeds (default 0); 0,1,2 narrows the intervals, ~8 min cold.",
        ),
    ] = None,
    organisms: Annotated[
        str | None,
        typer.Option("--organisms", help="Comma-separated organism seeds (default 0,1,2: the shipped ones)."),
    ] = None,
    retrain: Annotated[
        bool,
        typer.Option(
            "--retrain", help="Train the organisms from scratch instead of installing shipped ones."
        ),
    ] = False,
    threads: Annotated[int, typer.Option("--threads", help="torch CPU threads.")] = 2,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Processes (one torch thread each) for the independent stages; 1: all in this one. "
            f"Default: the CPUs this process may use, at most {MAX_DEFAULT_WORKERS}.",
        ),
    ] = None,
) -> None:
    """Run every stage (reusing finished ones), write summary.json and report.html, print a short table."""
    cfg = _config(quick, seeds, organisms, retrain)
    if threads < 1:
        raise fail(f"--threads must be >= 1, got {threads}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise fail(f"--workers must be >= 1, got {workers}")
    for flag, path in (("--out", out), ("--root", root)):
        if path is not None and path.exists() and not path.is_dir():
            raise fail(f"{flag} {path} is a file; give a folder")
    import torch
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per organism load drowns the demo's own lines
    if logging.getLogger().level > logging.DEBUG:  # the demo prints its own steps; `spillover -v demo` logs
        for name in ("spillover", "matplotlib"):  # matplotlib: "generated new fontManager" on a fresh machine
            logging.getLogger(name).setLevel(logging.WARNING)
    console = Console(stderr=True)
    summary = run_demo(
        cfg, out, root=root, progress=lambda msg: console.print(f"[bold]›[/] {msg}"), workers=workers
    )
    print_summary(summary)
    typer.echo(f"wrote {out / 'summary.json'} and {out / 'report.html'}")


def _config(
    quick: bool, seeds: str | None, organisms: str | None = None, retrain: bool = False
) -> DemoConfig:
    """The preset with ``--seeds``, ``--organisms`` and ``--retrain`` applied; a bad value exits before anything runs."""
    cfg = DemoConfig.quick() if quick else DemoConfig()
    changes: dict[str, object] = {"retrain": retrain}
    if seeds:
        changes["seeds"] = _seed_list("--seeds", seeds)
    if organisms:
        changes["organisms"] = _seed_list("--organisms", organisms)
    try:
        return replace(cfg, **changes)  # type: ignore[arg-type]
    except ValueError as exc:
        raise fail(str(exc)) from exc


def _seed_list(flag: str, value: str) -> tuple[int, ...]:
    try:
        parsed = tuple(int(s) for s in value.split(",") if s.strip())
    except ValueError as exc:
        raise fail(f"{flag} must be comma-separated integers, got {value!r}") from exc
    if not parsed:
        raise fail(f"{flag} names no seed: {value!r}")
    return parsed
