"""The ``spillover`` command. Verbs mirror the pipeline stages; each is a thin layer over the Python API.

spillover --help
spillover data fetch --all                      # or: spillover data import DIR (an offline copy)
spillover data inspect em/insecure
spillover questions inspect em/first_plot_questions
"""

from __future__ import annotations

import importlib
import logging
import statistics
from collections import Counter
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from spillover.cli._common import fail
from spillover.cli.data import data_fetch, data_import, data_list
from spillover.data.chat import ChatFormatError, load_chat
from spillover.data.fetch import DataNotFoundError, resolve_data
from spillover.data.questions import QuestionFormatError, load_questions

# Stage verbs live next to their code; each module exposes a typer ``app``. They are imported only when
# invoked (``spillover --help`` would otherwise import torch, transformers and SAELens: seconds), so
# the one-line help of each is kept here, next to its module.
_VERBS = {
    "theory": ("spillover.cli.theory", "Measure the spillover derivation (Δf_j ∝ cos(d_j, d_t)) in a toy model of superposition."),
    "organism": ("spillover.cli.organism", "The built-in model organism of emergent misalignment (tiny chat LM, CPU)."),
    "geometry": ("spillover.cli.geometry", "Score datasets by how close their SAE features sit to toxic features (geometry.json + plots)."),
    "sae": ("spillover.cli.sae", "Train and inspect SAEs (SAELens format)."),
    "finetune": ("spillover.cli.finetune", "Fine-tune the chain's model on finetune.data (EM recipe by default)."),
    "generate": ("spillover.cli.generate", "Sample answers to generate.questions (running finetune first if configured)."),
    "judge": ("spillover.cli.judge", "Judge answers (aligned/coherent, EM logprob rule); rescore from stored outputs."),
    "metrics": ("spillover.cli.metrics", "Misalignment rates (aligned < 30 and coherent > 50, and variants) with CIs."),
    "filter": ("spillover.cli.filter", "Filter a fine-tuning dataset by closeness to toxic features, or a random / judge baseline."),
    "mitigate": ("spillover.cli.mitigate", "Filters and fine-tuning arms on one organism dataset: EM, coherence, task retention, one table."),
    "demo": ("spillover.cli.demo", "The whole story on the built-in organism: induce, measure, explain, mitigate (report.html)."),
    "report": ("spillover.cli.report", "Write a self-contained HTML report from a run's summary.json."),
    "real": ("spillover.cli.real", "The paper's geometry on SmolLM2-135M-Instruct with the real EM datasets."),
    "sweep": ("spillover.cli.sweep", "Run a sweep (grid over config fields) through cached stages, locally or on Ray."),
}  # fmt: skip


class _LazyVerb(typer.core.TyperCommand):
    """A verb shown in ``--help`` by its one-line help; its module is imported when it is invoked."""

    def __init__(self, name: str, module: str, help: str) -> None:
        super().__init__(name, help=help, short_help=help)
        self.module = module

    def real(self) -> Any:
        command = typer.main.get_command(importlib.import_module(self.module).app)
        command.name = self.name
        return command

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra):  # type: ignore[no-untyped-def]
        return self.real().make_context(info_name, args, parent=parent, **extra)


class _Group(typer.core.TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *_VERBS]

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # Every stage is written atomically (spillover.rundir), so an interrupted run loses only the
            # stage it was in; without this line Ctrl-C exits silently.
            typer.echo(
                "\ninterrupted: finished stages stay cached ($SPILLOVER_HOME/runs, or --root); "
                "run the same command again to resume from them",
                err=True,
            )
            raise typer.Exit(130) from None

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in _VERBS:
            module, help = _VERBS[cmd_name]
            return _LazyVerb(cmd_name, module, help)
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    name="spillover",
    cls=_Group,
    help="Predict, induce, explain and mitigate emergent misalignment from SAE feature geometry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="Get the registry's datasets (fetch, import, list) and inspect chat datasets.", no_args_is_help=True
)
data_app.command("fetch")(data_fetch)
data_app.command("import")(data_import)
data_app.command("list")(data_list)
questions_app = typer.Typer(help="Inspect EM question files (YAML).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(questions_app, name="questions")

console = Console()
err_console = Console(stderr=True)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _quantiles(values: list[int]) -> str:
    if not values:
        return "-"
    qs = statistics.quantiles(values, n=20) if len(values) > 1 else [values[0]] * 19
    return f"mean {statistics.fmean(values):.1f} | median {statistics.median(values):.0f} | p95 {qs[18]:.0f} | max {max(values)}"


def _length_counter(tokenizer: str | None) -> Callable[[str], int]:
    """Message length in the tokens of ``tokenizer`` (loaded now, so a bad one fails first), else in words."""
    if not tokenizer:
        return lambda text: len(text.split())
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except (OSError, ValueError) as exc:
        raise fail(f"--tokenizer {tokenizer}: {exc}") from exc
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


@data_app.command("inspect")
def data_inspect(
    dataset: Annotated[str, typer.Argument(help="Registry name (em/insecure) or JSONL / JSONL.gz file.")],
    tokenizer: Annotated[
        str | None,
        typer.Option(help="Count tokens with this HF tokenizer (local folder); default counts words."),
    ] = None,
    samples: Annotated[int, typer.Option(help="How many conversations to print.")] = 1,
    limit: Annotated[int | None, typer.Option(help="Read only the first N conversations.")] = None,
) -> None:
    """Counts, role structure, length statistics and a sample of a chat dataset."""
    if samples < 0:
        raise fail(f"--samples must be >= 0, got {samples}")
    if limit is not None and limit < 1:
        raise fail(f"--limit must be >= 1, got {limit}")
    try:
        path = resolve_data(dataset)
    except DataNotFoundError as exc:
        raise fail(str(exc)) from exc
    if not path.is_file():
        raise fail(f"{path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}")
    count = _length_counter(tokenizer)
    unit = "tokens" if tokenizer else "words"
    try:
        convs = load_chat(path, limit=limit)
    except (ChatFormatError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
    structures = Counter(" > ".join(m["role"] for m in c) for c in convs)
    lengths: dict[str, list[int]] = {"system": [], "user": [], "assistant": []}
    for conv in convs:
        for msg in conv:
            lengths[msg["role"]].append(count(msg["content"]))
    table = Table(title=f"{path} — {len(convs)} conversations")
    table.add_column("role")
    table.add_column("messages", justify="right")
    table.add_column(f"length ({unit})")
    for role, values in lengths.items():
        if values:
            table.add_row(role, str(len(values)), _quantiles(values))
    console.print(table)
    console.print("[bold]role structure[/]")
    for structure, n in structures.most_common(5):
        console.print(f"  {n:>7}  {structure}")
    for conv in convs[:samples]:
        console.rule("sample")
        for msg in conv:
            text = msg["content"] if len(msg["content"]) < 600 else msg["content"][:600] + " …"
            console.print(f"[bold]{msg['role']}:[/] " + escape(text))


@questions_app.command("inspect")
def questions_inspect(
    source: Annotated[
        str, typer.Argument(help="Registry name (em/first_plot_questions) or question YAML file.")
    ],
    prompts: Annotated[
        bool, typer.Option("--prompts", help="Also print the judge prompt templates.")
    ] = False,
) -> None:
    """List questions (ids, paraphrases, samples, system prompts) and their judge prompts."""
    try:
        path = resolve_data(source)
        questions = load_questions(path)
    except (QuestionFormatError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
    table = Table(
        title=f"{path} — {len(questions)} questions, {len({q.base_id for q in questions})} base ids"
    )
    for col in ("id", "paraphrases", "samples/para", "system", "judge", "judge prompts", "first paraphrase"):
        table.add_column(col)
    for q in questions:
        table.add_row(
            q.id,
            str(len(q.paraphrases)),
            str(q.samples_per_paraphrase),
            "yes" if q.system else "",
            q.judge,
            ",".join(q.judge_prompts),
            escape(q.paraphrases[0][:60].replace("\n", " ")),
        )
    console.print(table)
    if prompts:
        shown: set[str] = set()
        for q in questions:
            for metric, template in q.judge_prompts.items():
                if template in shown:
                    continue
                shown.add(template)
                console.rule(f"judge prompt '{metric}' (first used by {q.id})")
                console.print(escape(template))
