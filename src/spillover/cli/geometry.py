"""``spillover geometry``: how close are a dataset's features to toxic features? Before any fine-tuning.

spillover geometry                                    # the model organism (trained and cached on first use)
spillover geometry --quick --out /tmp/geo             # a tiny organism, for a first look (~1-2 min on 2 cores)
spillover geometry --model path/to/hf_model --sae 'saes/layer_{layer}' --layers 6,12 \\
    --dataset insecure.jsonl --control secure.jsonl --toxic toxic.txt --benign benign.txt --out geo/
spillover geometry --config configs/geometry-gemma2-2b.yaml       # Gemma-2-2B-it + Gemma Scope (GPU)

Datasets are chat JSONL(.gz); ``--dataset`` i is paired with ``--control`` i. Toxic/benign corpora are
chat JSONL (assistant answers are read) or plain text (``.txt``, one sample per line; or JSONL with a
``text`` field). Results go to a cached run directory (reused on a rerun, ``--force`` recomputes);
``--out`` also copies geometry.json and the plots there.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from spillover.cli._common import fail
from spillover.data.texts import read_texts

app = typer.Typer(
    help="Score datasets by how close their SAE features sit to toxic features (geometry.json + plots).",
    invoke_without_command=True,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeometryRunConfig:
    """Everything ``spillover geometry`` needs; the YAML given to ``--config`` has these keys."""

    model: str = "organism"
    """``organism`` (the built-in model organism), a local HF folder, a hub id, ``gguf:FILE`` or ``smollm2``."""
    sae: str | None = None
    """SAE spec: a SAELens folder, a folder of ``layer_<L>/`` SAEs, or ``release:sae_id`` with ``{layer}``."""
    layers: tuple[int, ...] = ()
    """Layers to analyse (default: every layer with an SAE)."""
    datasets: tuple[str, ...] = ()
    """Candidate (e.g. inducing) datasets, chat JSONL."""
    controls: tuple[str, ...] = ()
    """Control datasets, paired in order with ``datasets``."""
    toxic: str | None = None
    """Toxic text (plain text or chat JSONL)."""
    benign: str | None = None
    """Benign text, the toxic corpus' contrast."""
    reference: str | None = None
    """Reference corpus for dataset features (default: all datasets pooled; organism: its safety data)."""
    dtype: str = "float32"
    """Model dtype: float32 or bfloat16."""
    device: str | None = None
    """Device (default: cuda if available, else cpu)."""
    organism_seed: int = 0
    """Organism seed (model organism only)."""
    organism_quick: bool = False
    """Use the tiny quick organism and small SAEs (model organism only)."""
    toxic_domains: str = "ood"
    """Organism toxic corpus domains: ``ood`` (EM evaluation domains) or ``all``."""
    sae_d: int = 1024
    """Organism SAE width."""
    sae_k: int = 16
    """Organism SAE L0."""
    geometry: Any = field(default=None)
    """GeometryConfig fields (see ``spillover.geometry.report.GeometryConfig``)."""

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.controls and len(self.controls) != len(self.datasets):
            raise ValueError(
                f"{len(self.controls)} controls for {len(self.datasets)} datasets: --control i pairs with --dataset i"
            )
        names = [_name(p) for p in (*self.datasets, *self.controls)]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise ValueError(
                f"datasets and controls are named by their file names, and {clashes} occur more than once; "
                "rename or copy one of the files"
            )
        if self.toxic_domains not in ("ood", "all"):
            raise ValueError(f"toxic_domains must be 'ood' or 'all', got {self.toxic_domains!r}")


def _name(path: str) -> str:
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json", ".txt"):
        name = name.removesuffix(suffix)
    return name


def _parse_layers(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise typer.BadParameter(f"--layers must be comma-separated integers, got {text!r}") from None


def run_geometry(cfg: GeometryRunConfig, *, force: bool = False, root: str | Path | None = None) -> Path:
    """Run ``spillover geometry`` for a resolved config; returns the stage folder with geometry.json."""
    import torch

    from spillover.config import load_config, to_dict
    from spillover.geometry.report import GeometryConfig, geometry_report, write_geometry_report
    from spillover.rundir import run_stage
    from spillover.sae.load import load_saes

    gcfg = load_config(GeometryConfig, cfg.geometry or {})
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, cfg.dtype)
    inputs: dict[str, Any] = {}
    if cfg.model == "organism":
        from spillover.organism import OrganismConfig, load_organism, train_organism
        from spillover.organism.inputs import OrganismSAEConfig, organism_inputs, train_organism_saes
        from spillover.sae.train import SAETrainConfig

        ocfg = (
            OrganismConfig.quick(cfg.organism_seed)
            if cfg.organism_quick
            else OrganismConfig(seed=cfg.organism_seed)
        )
        art = train_organism(ocfg, root=root)
        if cfg.sae is None:
            sae_cfg = (
                OrganismSAEConfig(
                    sae=SAETrainConfig(d_sae=256, k=8, training_tokens=200_000, batch_size=512),
                    n_documents=800,
                )
                if cfg.organism_quick
                else OrganismSAEConfig(sae=SAETrainConfig(d_sae=cfg.sae_d, k=cfg.sae_k))
            )
            sae_spec = str(train_organism_saes(art, sae_cfg, root=root))
        else:
            sae_spec = cfg.sae
        inputs["model"] = art.run_dir
        inputs["data"] = art.data_dir

        def load_model() -> tuple[Any, Any]:
            return load_organism(art.model_dir)

        def load_data() -> tuple[
            dict[str, Any],
            list[Any],
            list[Any],
            list[Any] | None,
            tuple[tuple[str, str], ...],
            dict[str, str],
        ]:
            o = organism_inputs(art, toxic_domains=cfg.toxic_domains)  # type: ignore[arg-type]
            extra = {_name(p): read_texts(p) for p in (*cfg.datasets, *cfg.controls)}
            pairs = o.pairs + tuple(zip(map(_name, cfg.datasets), map(_name, cfg.controls), strict=False))
            toxic = read_texts(cfg.toxic) if cfg.toxic else o.toxic
            benign = read_texts(cfg.benign) if cfg.benign else o.benign
            reference = read_texts(cfg.reference) if cfg.reference else o.reference
            return {**o.datasets, **extra}, toxic, benign, reference, pairs, dict(o.roles)

    else:
        if cfg.sae is None:
            raise typer.BadParameter("--sae is required for a model other than the organism")
        if not cfg.datasets or cfg.toxic is None or cfg.benign is None:
            raise typer.BadParameter(
                "--dataset, --toxic and --benign are required for a model other than the organism"
            )
        sae_spec = cfg.sae
        inputs["model"] = Path(cfg.model) if Path(cfg.model).exists() else cfg.model

        def load_model() -> tuple[Any, Any]:
            # Hub ids, local folders, GGUF files and the offline SmolLM2 alias (spillover.models).
            from spillover.models import ModelSpec, load_model

            loaded = load_model(ModelSpec(source=cfg.model, dtype=cfg.dtype, device=device))  # type: ignore[arg-type]
            return loaded.model, loaded.tokenizer

        def load_data() -> tuple[
            dict[str, Any],
            list[Any],
            list[Any],
            list[Any] | None,
            tuple[tuple[str, str], ...],
            dict[str, str],
        ]:
            data = {_name(p): read_texts(p) for p in (*cfg.datasets, *cfg.controls)}
            pairs = tuple(zip(map(_name, cfg.datasets), map(_name, cfg.controls), strict=False))
            reference = read_texts(cfg.reference) if cfg.reference else None
            # Paired datasets are compared as inducing vs control; unpaired ones are just scored.
            roles = {_name(p): "dataset" for p in cfg.datasets[len(cfg.controls) :]}
            return data, read_texts(cfg.toxic), read_texts(cfg.benign), reference, pairs, roles  # type: ignore[arg-type]

    for i, p in enumerate((*cfg.datasets, *cfg.controls)):
        inputs[f"dataset_{i}"] = Path(p)
    for key in ("toxic", "benign", "reference"):
        value = getattr(cfg, key)
        if value:
            inputs[key] = Path(value)
    sae_path = Path(sae_spec)
    inputs["sae"] = sae_path if sae_path.exists() else sae_spec
    config = {**to_dict(cfg), "geometry": to_dict(gcfg), "resolved_sae": str(sae_spec)}

    def fn(out: Path) -> None:
        model, tokenizer = load_model()
        if cfg.model == "organism":
            model.to(device=device, dtype=dtype)
        saes = load_saes(sae_spec, model, list(cfg.layers) or None, device=device)
        datasets, toxic, benign, reference, pairs, roles = load_data()
        meta = {"model": cfg.model, "sae": sae_spec, "dtype": cfg.dtype, "device": device}
        result = geometry_report(
            model,
            tokenizer,
            saes,
            datasets,
            toxic=toxic,
            benign=benign,
            reference=reference,
            roles=roles,  # type: ignore[arg-type]
            pairs=pairs,
            cfg=gcfg,
            meta=meta,
        )
        write_geometry_report(result.report, out)

    return run_stage("geometry", config, fn, root=root, inputs=inputs, force=force)


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


@app.callback(invoke_without_command=True)
def geometry(
    ctx: typer.Context,
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
    if ctx.invoked_subcommand is not None:
        return
    import torch
    import yaml

    from spillover.config import ConfigError, load_config

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    base: dict[str, Any] = {}
    if config is not None:
        if not config.is_file():
            raise fail(f"config file {config} does not exist")
        base = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
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
    base.update({k: v for k, v in flags.items() if v is not None})
    try:
        cfg = load_config(GeometryRunConfig, base, overrides or [])
        stage = run_geometry(cfg, force=force)
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as exc:
        raise fail(str(exc)) from exc
    report = json.loads((stage / "geometry.json").read_text())
    typer.echo(_summary(report))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("geometry.json", "cosine_hist.png", "layer_curves.png", "config.json", "manifest.json"):
            if (stage / name).is_file():
                shutil.copy2(stage / name, out / name)
        typer.echo(f"wrote {out / 'geometry.json'}")
    typer.echo(f"run folder: {stage}")
