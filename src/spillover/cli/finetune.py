"""``spillover finetune``: LoRA (or full) fine-tuning of any HF causal LM as a cached stage.

    spillover finetune --config chain.yaml
    spillover finetune -c chain.yaml --set finetune.max_steps=200 --set finetune.lora.r=1 \
        --set 'finetune.lora.target_modules=[down_proj]' --set 'finetune.lora.layers=[12]'

Prints the run folder (adapter/, checkpoints/, losses.json, summary.json). Multi-GPU is not needed for
LoRA on models up to ~9B; one GPU (``model.device=cuda``) or CPU for small models.
"""

from __future__ import annotations

import typer

from spillover.cli._common import (
    ConfigOpt,
    ForceOpt,
    RootOpt,
    SetOpt,
    echo_path,
    fail,
    load_cli_config,
    run_reporting,
)

app = typer.Typer(add_completion=False)


@app.command(
    help="Fine-tune the chain's model on finetune.data (EM recipe by default); prints the run folder."
)
def finetune_command(
    config: ConfigOpt = None, overrides: SetOpt = None, root: RootOpt = None, force: ForceOpt = False
) -> None:
    """Run (or reuse) the finetune stage."""
    from spillover.chain.stages import run_chain

    cfg = load_cli_config(config, overrides)
    if cfg.finetune is None:
        raise fail("the config has no finetune section; give finetune.data (e.g. --set finetune.data=FILE)")
    result = run_reporting(
        lambda: run_chain(cfg, until="finetune", root=root, force={"finetune"} if force else ())
    )
    echo_path(result.finetune)
