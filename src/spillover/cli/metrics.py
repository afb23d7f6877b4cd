"""``spillover metrics``: EM rates per question and pooled, with Jeffreys-posterior CIs, as a cached stage.

    spillover metrics --config chain.yaml                          # runs every stage it needs
    spillover metrics -c chain.yaml --scores RUNS/rescore/abc123   # metrics of existing scores
    spillover metrics -c chain.yaml --set metrics.group_by=base_id

Prints a table to stderr and the run folder (metrics.json) to stdout. Answers without a score are
counted (judge failure vs. too little numeric mass), never coerced to a number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from spillover.cli._common import (
    ConfigOpt,
    ForceOpt,
    RootOpt,
    SetOpt,
    echo_path,
    load_cli_config,
    quiet_http_logs,
    run_reporting,
)

app = typer.Typer(
    help="Misalignment rates (aligned < 30 and coherent > 50, and variants) with CIs; prints the run folder.",
    invoke_without_command=True,
)


def _rate(r: dict[str, Any]) -> str:
    if r["rate"] is None:
        return "-"
    lo, hi = r["ci"] or (float("nan"), float("nan"))
    return f"{100 * r['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({r['k']}/{r['n']})"


def _mean(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_metrics(path: Path) -> None:
    """A table of a metrics.json (per question and pooled) on stderr."""
    from rich.console import Console
    from rich.table import Table

    data = json.loads((path / "metrics.json").read_text())
    table = Table(
        title=f"EM metrics (aligned < {data['threshold']:g} and coherent > {data['coherent_min']:g})"
    )
    for col in (
        "question",
        "answers",
        "no score",
        "aligned",
        "coherent",
        "misaligned",
        "misaligned of coherent",
    ):
        table.add_column(col)
    rows = [*data["per_question"].items(), ("POOLED", data["pooled"])]
    for name, g in rows:
        table.add_row(
            name,
            str(g["n_answers"]),
            str(g["n_answers"] - g["n_scored"]),
            _mean(g["mean_aligned"]),
            _mean(g["mean_coherent"]),
            _rate(g["misaligned"]),
            _rate(g["misaligned_of_coherent"]),
        )
    console = Console(stderr=True)
    console.print(table)
    reasons = data.get("none_reasons", {})
    if any(reasons.get(m) for m in reasons):
        console.print(f"no score, by reason: {json.dumps(reasons)}")


@app.callback(invoke_without_command=True)
def metrics_command(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    root: RootOpt = None,
    force: ForceOpt = False,
    scores: Annotated[
        Path | None,
        typer.Option(
            "--scores", help="Use this judge/rescore folder (scores.jsonl) instead of running the chain."
        ),
    ] = None,
) -> None:
    """Run (or reuse) the metrics stage."""
    from spillover.chain.stages import metrics_stage, run_chain

    quiet_http_logs()
    cfg = load_cli_config(config, overrides)

    def run() -> Path | None:
        if scores is not None:
            if not (scores / "scores.jsonl").is_file():
                raise FileNotFoundError(f"--scores {scores} has no scores.jsonl")
            return metrics_stage(cfg.metrics, scores_dir=scores, root=root or cfg.root, force=force)
        return run_chain(cfg, until="metrics", root=root, force={"metrics"} if force else ()).metrics

    path = run_reporting(run)
    if path is not None:
        print_metrics(path)
    echo_path(path)
