"""``spillover judge``: score answers 0-100 for aligned/coherent as a cached, resumable stage.

    export OPENAI_API_KEY=...                                        # read from the env, never stored
    spillover judge --config chain.yaml                              # runs finetune/generate first if needed
    spillover judge -c chain.yaml --answers RUNS/generate/abc123     # judge an existing generate folder
    spillover judge -c chain.yaml --set judge.backend=local --set judge.local.model.source=/models/judge
    spillover judge rescore RUNS/judge/def456 --min-mass 0.5         # recompute from stored logprobs
    spillover judge mock-server --latency 0.05 --fault-rate 0.1      # a local fake endpoint for dry runs

Finished calls are cached under <root>/judge-cache/, so a killed run resumes where it stopped and
``--force`` re-judges only what is not cached (e.g. calls that failed). Prints the run folder.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer

from spillover.cli._common import (
    ConfigOpt,
    ForceOpt,
    RootOpt,
    SetOpt,
    echo_path,
    fail,
    load_cli_config,
    quiet_http_logs,
    run_reporting,
)
from spillover.judge.aggregate import MIN_NUMERIC_MASS

app = typer.Typer(
    help="Judge answers (aligned/coherent, EM logprob rule); prints the run folder.",
    invoke_without_command=True,
)


@app.callback(invoke_without_command=True)
def judge_command(
    ctx: typer.Context,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    root: RootOpt = None,
    force: ForceOpt = False,
    answers: Annotated[
        Path | None,
        typer.Option(
            "--answers", help="Judge this generate folder (answers.jsonl) instead of running the chain."
        ),
    ] = None,
) -> None:
    """Run (or reuse) the judge stage."""
    if ctx.invoked_subcommand is not None:
        return
    from spillover.chain.checks import check_judge
    from spillover.chain.judging import judge_stage
    from spillover.chain.stages import run_chain

    quiet_http_logs()
    cfg = load_cli_config(config, overrides)

    def run() -> Path | None:
        if answers is not None:
            if not (answers / "answers.jsonl").is_file():
                raise FileNotFoundError(f"--answers {answers} has no answers.jsonl")
            check_judge(cfg.judge)
            return judge_stage(cfg.judge, answers_dir=answers, root=root or cfg.root, force=force)
        return run_chain(cfg, until="judge", root=root, force={"judge"} if force else ()).judge

    echo_path(run_reporting(run))


@app.command("rescore")
def rescore_command(
    scores: Annotated[Path, typer.Argument(help="A judge (or rescore) folder with scores.jsonl.")],
    min_mass: Annotated[
        float, typer.Option("--min-mass", help="Minimum probability on integer tokens for a score.")
    ] = MIN_NUMERIC_MASS,
    root: RootOpt = None,
    force: ForceOpt = False,
) -> None:
    """Recompute scores from the stored raw judge outputs, without calling the judge."""
    from spillover.chain.judging import rescore_stage

    def run() -> Path:
        if not 0 < min_mass <= 1:
            raise ValueError(f"--min-mass must be in (0, 1], got {min_mass}")
        if not (scores.is_file() or (scores / "scores.jsonl").is_file()):
            raise FileNotFoundError(f"{scores} has no scores.jsonl (give a judge or rescore folder)")
        return rescore_stage(scores, min_mass=min_mass, root=root, force=force)

    echo_path(run_reporting(run))


@app.command("mock-server")
def mock_server_command(
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 8765,
    latency: Annotated[float, typer.Option(help="Seconds before every response.")] = 0.0,
    fault_rate: Annotated[float, typer.Option(help="Share of requests given an injected fault.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the fault draws.")] = 0,
) -> None:
    """Serve a fake OpenAI-compatible judge (deterministic logprobs) on 127.0.0.1 until Ctrl-C."""
    from spillover.judge.mock_server import MockJudgeServer

    if latency < 0 or not 0 <= port <= 65535:
        raise fail(f"--latency must be >= 0 and --port in 0..65535, got {latency} and {port}")
    try:
        server = MockJudgeServer(latency_s=latency, fault_rate=fault_rate, seed=seed, port=port).start()
    except (ValueError, RuntimeError, OSError) as exc:
        raise fail(f"mock judge server: {exc}") from exc
    typer.echo(f"mock judge at {server.base_url} (use --set judge.openai.base_url={server.base_url})")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
