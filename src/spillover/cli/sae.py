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
from typing import TYPE_CHECKING, Annotated, Any

import typer

from spillover.cli._common import fail

if TYPE_CHECKING:
    from spillover.organism import OrganismConfig
    from spillover.sae.train import SAETrainConfig

app = typer.Typer(add_completion=False, help="Train and inspect SAEs (SAELens format).", no_args_is_help=True)


def _layers(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise fail(f"--layers must be comma-separated integers, got {text!r}") from None
    if any(layer < 0 for layer in layers):
        raise fail(f"--layers must be >= 0, got {text!r}")
    return layers


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
    dtype: Annotated[str, typer.Option(help="Model dtype: float32, bfloat16 or float16.")] = "float32",
) -> None:
    """Train one TopK SAE per layer and save each in SAELens format, with its FVU / L0 / dead fraction.

    Every option, the corpus, the model folder and the layers are checked before any model is trained.
    """
    from spillover.sae.sites import SiteError, check_layers
    from spillover.sae.train import SAETrainConfig

    layer_list = _layers(layers)
    if tokens not in ("all", "assistant", "user"):
        raise fail(f"--tokens must be all, assistant or user, got {tokens!r}")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise fail(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} is a file, not a folder")
    try:
        cfg = SAETrainConfig(d_sae=d_sae, k=k, training_tokens=training_tokens, seed=seed)
    except ValueError as exc:
        raise fail(f"--d-sae {d_sae} / --k {k} / --training-tokens {training_tokens}: {exc}") from exc
    if model == "organism":
        if data:
            raise fail("--data does not apply to --model organism (its SAEs train on its own corpus)")
        from spillover.organism import OrganismConfig

        organism_cfg = OrganismConfig(seed=seed)
        try:
            check_layers(layer_list, organism_cfg.model.n_layers, "the organism")
        except SiteError as exc:
            raise fail(f"--layers: {exc}") from exc
        _train_organism_saes(organism_cfg, layer_list, cfg, out)
    else:
        _train_model_saes(model, data or [], layer_list, cfg, out, tokens=tokens, dtype=dtype)
    _print_quality(out)


def _train_organism_saes(
    organism_cfg: OrganismConfig, layers: list[int], cfg: SAETrainConfig, out: Path
) -> None:
    from spillover.organism import train_organism
    from spillover.organism.inputs import OrganismSAEConfig, train_organism_saes

    art = train_organism(organism_cfg)
    stage = train_organism_saes(art, OrganismSAEConfig(layers=tuple(layers), sae=cfg))
    out.mkdir(parents=True, exist_ok=True)
    for child in stage.iterdir():
        if child.is_dir() and child.name.startswith("layer_"):
            shutil.copytree(child, out / child.name, dirs_exist_ok=True)


def _train_model_saes(
    model: str,
    data: list[Path],
    layers: list[int],
    cfg: SAETrainConfig,
    out: Path,
    *,
    tokens: str,
    dtype: str,
) -> None:
    from spillover.data.texts import read_texts
    from spillover.models import ModelSpec, load_model
    from spillover.sae.sites import SiteError, check_layers
    from spillover.sae.train import train_layer_saes

    if not data:
        raise fail("--data is required (the SAE's training corpus)")
    try:
        samples: list[Any] = [s for path in data for s in read_texts(path)]
    except (FileNotFoundError, ValueError) as exc:
        raise fail(f"--data: {exc}") from exc
    if not samples:
        raise fail(f"--data {', '.join(map(str, data))}: no samples to train on")
    n_layers = _config_value(model, "num_hidden_layers")
    try:
        if n_layers is not None:
            check_layers(layers, n_layers, model)
    except SiteError as exc:
        raise fail(f"--layers: {exc}") from exc
    try:
        loaded = load_model(ModelSpec(source=model, dtype=dtype))  # type: ignore[arg-type]
    except (OSError, ValueError) as exc:
        raise fail(f"--model {model}: {exc}") from exc
    try:
        train_layer_saes(
            loaded.model,
            loaded.tokenizer,
            samples,
            layers,
            cfg,
            out,
            tokens=tokens,  # type: ignore[arg-type]
            model_name=model,
        )
    except SiteError as exc:
        raise fail(f"--layers: {exc}") from exc


def _config_value(model: str, name: str) -> int | None:
    """An integer of the model's config (e.g. ``hidden_size``), read without loading weights, or fail.

    The built-in organism is not trained for it: its config is ``OrganismConfig``'s.
    """
    if model == "organism":
        from spillover.organism import OrganismConfig

        shape = OrganismConfig().model
        return {"num_hidden_layers": shape.n_layers, "hidden_size": shape.d_model}.get(name)
    from transformers import AutoConfig

    from spillover.models import resolve_source

    try:
        config = AutoConfig.from_pretrained(resolve_source(model))
    except (OSError, ValueError) as exc:
        raise fail(f"--model {model}: {exc}") from exc
    value = getattr(config, name, None) or getattr(getattr(config, "text_config", None), name, None)
    return value if isinstance(value, int) else None


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
    model: Annotated[
        str | None, typer.Option(help="Check it against this model (width, layer): folder, hub id or source.")
    ] = None,
) -> None:
    """Shape, site, architecture and (for spillover-trained SAEs) reconstruction quality of an SAE."""
    from spillover.sae.load import SAELoadError, check_sae_spec, read_sae, wrap_sae

    try:
        check_sae_spec(spec)
        sae, source = read_sae(spec)
    except (SAELoadError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
    cfg = sae.cfg
    handle = None
    if model is not None:
        from spillover.models import ModelSpec, load_model

        width = _config_value(model, "hidden_size")
        if width is not None and width != int(cfg.d_in):
            raise fail(
                f"SAE {source} reads width d_in={cfg.d_in} but the model {model} has hidden size {width}; "
                "use an SAE trained on this model"
            )
        try:
            hf = load_model(ModelSpec(source=model, device="cpu")).model
        except (OSError, ValueError) as exc:
            raise fail(f"--model {model}: {exc}") from exc
        try:
            handle = wrap_sae(sae, hf, source=source)
        except SAELoadError as exc:
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
