"""``spillover generate``: sample answers to EM question files as a cached stage.

    spillover generate --config chain.yaml                       # fine-tunes first if the config says so
    spillover generate -c chain.yaml --set finetune=null         # the base model
    spillover generate -c chain.yaml --finetune-run RUNS/finetune/abc123 --set generate.checkpoint=step-50
    spillover generate -c chain.yaml --set generate.backend=vllm # GPU, pip install 'spillover[vllm]'

Prints the run folder (answers.jsonl, questions.yaml, summary.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spillover.cli._common import (
    ConfigOpt,
    ForceOpt,
    RootOpt,
    SetOpt,
    echo_path,
    load_cli_config,
    run_reporting,
)

app = typer.Typer(add_completion=False)


@app.command(
    help="Sample answers to generate.questions (running finetune first if configured); prints the run folder."
)
def generate_command(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    root: RootOpt = None,
    force: ForceOpt = False,
    finetune_run: Annotated[
        Path | None,
        typer.Option("--finetune-run", help="Sample from this finished finetune folder (skips finetune)."),
    ] = None,
) -> None:
    """Run (or reuse) the generate stage."""
    from spillover.chain.checks import check_generate
    from spillover.chain.stages import generate_stage, run_chain
    from spillover.models.sources import check_model_source

    cfg = load_cli_config(config, overrides)

    def run() -> Path | None:
        if finetune_run is not None:
            if not (finetune_run / "config.json").is_file():
                raise FileNotFoundError(f"--finetune-run {finetune_run} is not a finished finetune folder")
            check_model_source(cfg.model)
            check_generate(cfg.generate)
            return generate_stage(
                cfg.generate, cfg.model, finetune_dir=finetune_run, root=root or cfg.root, force=force
            )
        return run_chain(cfg, until="generate", root=root, force={"generate"} if force else ()).generate

    echo_path(run_reporting(run))
