"""``spillover judge``: score answers 0-100 for aligned/coherent as a cached, resumable stage.

    export OPENAI_API_KEY=...                                        # read from the env, never stored
    spillover judge --config chain.yaml                              # runs finetune/generate first if needed
    spillover judge -c chain.yaml --answers RUNS/generate/abc123     # judge an existing generate folder
    spillover judge -c chain.yaml --set judge.backend=local --set judge.local.model.source=/models/judge
    spillover judge rescore RUNS/judge/def456 --min-mass 0.5         # recompute from stored logprobs
    spillover judge mock-server --latency 0.05 --fault-rate 0.1      # a local fake endpoint for dry runs
    spillover judge validate --against eval.csv.gz --questions em/first_plot_questions -c chain.yaml

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
    add_completion=False,
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


def print_validation(path: Path, source: str | None = None) -> None:
    """A table of a validation.json (reference = the CSV's scores, candidate = the configured judge)."""
    import json

    from rich.console import Console
    from rich.table import Table

    data = json.loads((path / "validation.json").read_text())

    def num(value: float | None, fmt: str = ".3f") -> str:
        return "-" if value is None else format(value, fmt)

    def rate(r: dict[str, object]) -> str:
        value = r["rate"]
        return "-" if not isinstance(value, float | int) else f"{100 * value:.1f}% ({r['k']}/{r['n']})"

    table = Table(title=f"judge agreement ({data['n_answers']} answers){chr(10) + source if source else ''}")
    for col in ("judge", "EM rate (scored)", "EM rate (of all)", "no aligned", "no coherent"):
        table.add_column(col)
    for who in ("reference", "candidate"):
        s = data[who]
        table.add_row(
            who,
            rate(s["em_rate"]),
            rate(s["em_rate_of_all"]),
            f"{100 * s['unscored']['aligned']:.1f}%",
            f"{100 * s['unscored']['coherent']:.1f}%",
        )
    console = Console(stderr=True)
    console.print(table)
    rho = ", ".join(f"{m} {num(c['rho'])} (n={c['n']})" for m, c in data["spearman"].items())
    lab = data["label"]
    console.print(f"Spearman: {rho}")
    console.print(
        f"misaligned label (n={lab['n']}, {lab['n_positive']} by the reference): AUROC {num(lab['auroc'])}, "
        f"F1 {num(lab['f1'])}, precision {num(lab['precision'])}, recall {num(lab['recall'])}"
    )


@app.command("validate")
def validate_command(
    against: Annotated[
        str,
        typer.Option(
            "--against",
            help="A judged-answer CSV (.csv/.csv.gz, or a registry name such as em-responses/...: question, answer or response, question_id, aligned, "
            "coherent) whose stored scores are the reference.",
        ),
    ],
    questions: Annotated[
        str | None,
        typer.Option(
            "--questions",
            help="Question YAML (or a registry name: em/first_plot_questions) with judge prompts for the CSV's question ids (default: the config's "
            "generate.questions when that file exists; judge.prompts_file serves questions it lacks).",
        ),
    ] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    root: RootOpt = None,
    force: ForceOpt = False,
) -> None:
    """Score a judged CSV's answers with the configured judge; report agreement with its stored scores.

    Writes validation.json (Spearman per metric, AUROC and F1 of the misaligned label, the EM rate under
    each judge, the share each leaves unscored) and the new scores (scores.jsonl); prints the folder.
    """
    from spillover.chain.validate import validate_stage
    from spillover.data.fetch import DataNotFoundError, resolve_data

    quiet_http_logs()
    cfg = load_cli_config(config, overrides)
    try:
        against_file = resolve_data(against)
        question_file = resolve_data(questions) if questions is not None else None
        configured = resolve_data(cfg.generate.questions) if cfg.generate.questions else None
    except DataNotFoundError as exc:
        raise fail(str(exc)) from exc
    if question_file is not None and not question_file.is_file():
        raise fail(f"--questions: question file {questions!r} does not exist")
    if question_file is None and configured is not None and configured.is_file():
        question_file = configured
    if not against_file.is_file():
        raise fail(f"--against {against}: no such file")

    def run() -> Path:
        return validate_stage(
            cfg.judge,
            cfg.metrics,
            against=against_file,
            questions=question_file,
            root=root or cfg.root,
            force=force,
        )

    path = run_reporting(run)
    print_validation(path, str(against_file))
    echo_path(path)


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
