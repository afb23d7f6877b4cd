"""``spillover sae``: train TopK SAEs for a model that has none, and inspect SAEs.

spillover sae train --model path/to/hf_model --data corpus.jsonl --layers 1,2 --out saes/ --d-sae 1024 --k 16
spillover sae train --model organism --out saes/          # the model organism's SAEs (cached run folder)
spillover sae info saes/layer_1 --model path/to/hf_model
spillover sae info 'gemma-scope-2b-pt-res-canonical:layer_12/width_16k/canonical'   # needs the hub
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from spillover.cli._common import fail

app = typer.Typer(help="Train and inspect SAEs (SAELens format).", no_args_is_help=True)


def _layers(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--layers must be comma-separated integers, got {text!r}") from None


@app.command("train")
def train(
    model: Annotated[str, typer.Option(help="HF model folder / hub id, or 'organism'.")],
    out: Annotated[Path, typer.Option(help="Folder for layer_<L>/ SAELens SAEs.")],
    data: Annotated[
        list[Path] | None, typer.Option("--data", help="Chat JSONL or .txt training corpus (repeatable).")
    ] = None,
    layers: Annotated[str | None, typer.Option(help="Comma-separated layers (default: all).")] = None,
    d_sae: Annotated[int, typer.Option("--d-sae", help="Latents.")] = 1024,
    k: Annotated[int, typer.Option(help="Active latents per token (TopK).")] = 16,
    training_tokens: Annotated[
        int, typer.Option("--training-tokens", help="Activations seen in training.")
    ] = 2_000_000,
    tokens: Annotated[
        str, typer.Option(help="Tokens to train on: all (non-special), assistant, user.")
    ] = "all",
    seed: Annotated[int, typer.Option(help="SAE seed (and organism seed for --model organism).")] = 0,
    dtype: Annotated[str, typer.Option(help="Model dtype: float32 or bfloat16.")] = "float32",
) -> None:
    """Train one TopK SAE per layer and save each in SAELens format, with its FVU / L0 / dead fraction."""
    import torch

    from spillover.sae.sites import num_layers, site_for_layer
    from spillover.sae.train import SAETrainConfig, collect_training_activations, train_sae_on_activations

    cfg = SAETrainConfig(d_sae=d_sae, k=k, training_tokens=training_tokens, seed=seed)
    if tokens not in ("all", "assistant", "user"):
        raise typer.BadParameter(f"--tokens must be all, assistant or user, got {tokens!r}")
    if model == "organism":
        from spillover.organism import OrganismConfig, train_organism
        from spillover.organism.inputs import OrganismSAEConfig, train_organism_saes

        art = train_organism(OrganismConfig(seed=seed))
        stage = train_organism_saes(art, OrganismSAEConfig(layers=tuple(_layers(layers)), sae=cfg))
        out.mkdir(parents=True, exist_ok=True)
        for child in stage.iterdir():
            if child.is_dir() and child.name.startswith("layer_"):
                shutil.copytree(child, out / child.name, dirs_exist_ok=True)
        _print_quality(out)
        return
    if not data:
        raise typer.BadParameter("--data is required (the SAE's training corpus)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spillover.data.texts import read_texts

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype))
    hf.to(device)  # type: ignore[arg-type]
    hf.eval()
    tok = AutoTokenizer.from_pretrained(model)
    samples: list[Any] = [s for path in data for s in read_texts(path)]
    for layer in _layers(layers) or list(range(num_layers(hf))):
        site = site_for_layer(hf, layer)
        acts = collect_training_activations(hf, tok, samples, site, tokens=tokens)  # type: ignore[arg-type]
        train_sae_on_activations(
            acts, cfg, site=site, model=hf, model_name=str(model), out_dir=out / f"layer_{layer}"
        )
    _print_quality(out)


def _print_quality(out: Path) -> None:
    for child in sorted(out.glob("layer_*/training.json")):
        q = json.loads(child.read_text())["heldout"]
        typer.echo(
            f"{child.parent.name}: FVU {q['fvu']:.4f}  L0 {q['l0']:.1f}  dead {100 * q['dead_fraction']:.1f}%  "
            f"(held-out {q['n_tokens']} tokens)"
        )


@app.command("info")
def info(
    spec: Annotated[str, typer.Argument(help="SAE folder or 'release:sae_id'.")],
    model: Annotated[str | None, typer.Option(help="Check it against this HF model (width, layer).")] = None,
) -> None:
    """Shape, site, architecture and (for spillover-trained SAEs) reconstruction quality of an SAE."""
    from spillover.sae.load import SAELoadError, load_sae

    hf = None
    if model is not None:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(model)
    try:
        handle = load_sae(spec, hf) if hf is not None else None
        if handle is None:
            from sae_lens import SAE

            path = Path(spec)
            sae = SAE.load_from_disk(path) if path.is_dir() else SAE.from_pretrained(*spec.split(":", 1))
            cfg = sae.cfg
        else:
            cfg = handle.sae.cfg
    except (SAELoadError, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"architecture {cfg.architecture()}  d_in {cfg.d_in}  d_sae {cfg.d_sae}")
    typer.echo(f"hook_name {cfg.metadata.get('hook_name')}  hf_hook_name {cfg.metadata.get('hf_hook_name')}")
    if handle is not None:
        typer.echo(
            f"site {handle.site.module_path}:{handle.site.io} (layer {handle.layer}) -- fits the model"
        )
    training = Path(spec) / "training.json"
    if training.is_file():
        q = json.loads(training.read_text())["heldout"]
        typer.echo(f"held-out FVU {q['fvu']:.4f}  L0 {q['l0']:.1f}  dead {100 * q['dead_fraction']:.1f}%")
