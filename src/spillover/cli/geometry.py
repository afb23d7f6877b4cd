"""``spillover geometry``: how close are a dataset's features to toxic features? Before any fine-tuning.

spillover geometry                                    # the model organism (trained and cached on first use)
spillover geometry --quick --out /tmp/geo             # a tiny organism, for a first look (~1-2 min on 2 cores)
spillover geometry --model path/to/hf_model --sae 'saes/layer_{layer}' --layers 6,12 \\
    --dataset insecure.jsonl --control secure.jsonl --toxic toxic.txt --benign benign.txt --out geo/
spillover geometry --config configs/geometry-gemma2-2b.yaml       # Gemma-2-2B-it + Gemma Scope (GPU)

A shell over ``spillover.studies.geometry.run_geometry`` (the inputs, their checks and the stage live
there). Results go to a cached run directory (reused on a rerun, ``--force`` recomputes); ``--out`` also
copies geometry.json and the plots there.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from spillover.cli._common import fail
from spillover.config import read_yaml_mapping
from spillover.studies.geometry import GeometryRunConfig, run_geometry

app = typer.Typer(add_completion=False)


def _parse_layers(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise typer.BadParameter(f"--layers must be comma-separated integers, got {text!r}") from None


def _summary(report: dict[str, Any]) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="spillover geometry")
    layers = list(report["layers"])
    table.add_column("dataset")
    table.add_column("role")
    for key in layers:
        table.add_column(f"{key} proximity (null)", justify="right")
        table.add_column(f"{key} mean-diff", justify="right")
    table.add_column("risk", justify="right")
    for name, info in report["datasets"].items():
        row = [name, info["role"]]
        for key in layers:
            entry = report["layers"][key]["datasets"][name]
            null = entry["null"]["mean_max"]["null_mean"]
            prox = entry["geometry"]["proximity"]
            row.append(f"{prox:.3f} ({null:.3f})" if prox is not None and null is not None else "-")
            row.append(f"{entry['mean_diff']:.3f}" if entry["mean_diff"] is not None else "-")
        risk = report["risk"]["scores"].get(name)
        row.append(f"{risk:.3f}" if risk is not None else "-")
        table.add_row(*row)
    console = Console(record=True, width=200, file=io.StringIO())  # rendered here, printed by the caller
    console.print(table)
    for key in layers:
        comp = report["layers"][key].get("comparison")
        if comp:
            perm = comp["feature_level"]["permutation"]
            console.print(
                f"{key}: inducing vs control nearest-toxic cosine {comp['feature_level']['mean_inducing']:.3f} vs "
                f"{comp['feature_level']['mean_control']:.3f} (permutation p={perm['p_value']:.4f})"
            )
    return console.export_text()


@app.command(
    help="Score datasets by how close their SAE features sit to toxic features (geometry.json + plots)."
)
def geometry(
    model: Annotated[
        str | None, typer.Option(help="'organism' (default) or an HF model folder / hub id.")
    ] = None,
    sae: Annotated[
        str | None,
        typer.Option(help="SAE folder, folder of layer_<L>/ SAEs, or 'release:sae_id' ({layer} expands)."),
    ] = None,
    layers: Annotated[str | None, typer.Option(help="Comma-separated layers, e.g. 6,12,18.")] = None,
    dataset: Annotated[
        list[str] | None, typer.Option("--dataset", help="Candidate dataset (repeatable).")
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option("--control", help="Control dataset, paired with --dataset i (repeatable)."),
    ] = None,
    toxic: Annotated[
        str | None, typer.Option(help="Toxic text: .txt lines, JSONL 'text', or chat JSONL.")
    ] = None,
    benign: Annotated[str | None, typer.Option(help="Benign text, same formats.")] = None,
    reference: Annotated[
        str | None, typer.Option(help="Reference corpus for dataset features (default: pooled datasets).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML with GeometryRunConfig keys (geometry: GeometryConfig)."),
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Dotted override, e.g. geometry.top_k=50 (repeatable).")
    ] = None,
    dtype: Annotated[str | None, typer.Option(help="float32 (default) or bfloat16.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu / cuda (default: cuda if available).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Organism seed.")] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny organism and SAEs (a first look in ~2 minutes).")
    ] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Also copy geometry.json and plots here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute even if a finished run exists.")] = False,
) -> None:
    """Score datasets by how close their SAE features sit to toxic features, per layer, with statistics."""
    import torch

    from spillover.config import ConfigError, load_config

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    if out is not None and out.exists() and not out.is_dir():
        raise fail(f"--out {out} exists and is not a folder")
    flags = {
        "model": model,
        "sae": sae,
        "layers": list(_parse_layers(layers)) or None,
        "datasets": dataset or None,
        "controls": control or None,
        "toxic": toxic,
        "benign": benign,
        "reference": reference,
        "dtype": dtype,
        "device": device,
        "organism_seed": seed,
        "organism_quick": True if quick else None,
    }
    try:
        base = read_yaml_mapping(config) if config is not None else {}
        base.update({k: v for k, v in flags.items() if v is not None})
        cfg = load_config(GeometryRunConfig, base, overrides or [])
        stage = run_geometry(cfg, force=force)
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as exc:
        raise fail(str(exc.args[0]) if isinstance(exc, KeyError) else str(exc)) from exc
    report = json.loads((stage / "geometry.json").read_text())
    typer.echo(_summary(report))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        copied = []
        for name in ("geometry.json", "cosine_hist.png", "layer_curves.png", "config.json", "manifest.json"):
            if (stage / name).is_file():
                shutil.copy2(stage / name, out / name)
                copied.append(name)
        typer.echo(f"wrote {out}/: {', '.join(copied)}")
    typer.echo(f"run folder: {stage}")
