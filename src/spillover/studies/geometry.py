"""The ``spillover geometry`` study: how close are a dataset's features to toxic features? Before any fine-tuning.

spillover geometry                                    # the model organism (trained and cached on first use)
spillover geometry --quick --out /tmp/geo             # a tiny organism, for a first look (~1-2 min on 2 cores)
spillover geometry --model path/to/hf_model --sae 'saes/layer_{layer}' --layers 6,12 \\
    --dataset insecure.jsonl --control secure.jsonl --toxic toxic.txt --benign benign.txt --out geo/
spillover geometry --config configs/geometry-gemma2-2b.yaml       # Gemma-2-2B-it + Gemma Scope (GPU)

Python::

    from spillover.studies.geometry import GeometryRunConfig, run_geometry
    stage = run_geometry(GeometryRunConfig(organism_quick=True))     # the folder holding geometry.json

Datasets are chat JSONL(.gz); ``datasets[i]`` is paired with ``controls[i]``. Toxic/benign corpora are
chat JSONL (assistant answers are read) or plain text (``.txt``, one sample per line; or JSONL with a
``text`` field). With the organism, its own datasets, corpora and SAEs are the defaults and any given file
is added to (datasets) or replaces (corpora, SAEs) them.

Every input is checked by ``check_geometry_inputs`` before anything long runs (organism or SAE training,
model loading): files exist and parse, the SAE spec names existing SAEs, layers exist where that is known
without a model, and the geometry settings are valid.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from spillover.data.fetch import resolve_data
from spillover.data.texts import read_texts

if TYPE_CHECKING:
    from spillover.geometry.report import GeometryConfig
    from spillover.organism import OrganismConfig
    from spillover.organism.inputs import OrganismSAEConfig

__all__ = ["GeometryInputs", "GeometryRunConfig", "check_geometry_inputs", "run_geometry"]

log = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16")


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
    """Model dtype: float32, bfloat16 or float16."""
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
    geometry: dict[str, Any] | None = None
    """GeometryConfig fields (see ``spillover.geometry.report.GeometryConfig``), resolved and checked by
    ``check_geometry_inputs``."""

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
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
        bad = [layer for layer in self.layers if layer < 0]
        if bad or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must be distinct non-negative integers, got {list(self.layers)}")


class GeometryInputs(NamedTuple):
    """What ``geometry_report`` reads: named datasets, the corpora, the pairs and the roles."""

    datasets: dict[str, list[Any]]
    toxic: list[Any]
    benign: list[Any]
    reference: list[Any] | None
    pairs: tuple[tuple[str, str], ...]
    roles: dict[str, str]


class _UserTexts(NamedTuple):
    """The files the user named, read once (None: not given)."""

    datasets: dict[str, list[Any]]
    toxic: list[Any] | None
    benign: list[Any] | None
    reference: list[Any] | None


class _Source(NamedTuple):
    """Where the model, its SAEs and the data come from (the organism's or the user's)."""

    sae_spec: str
    inputs: dict[str, Any]
    """Stage inputs identifying the model (and the organism's data)."""
    load_model: Callable[[], tuple[Any, Any]]
    load_data: Callable[[], GeometryInputs]
    cast: bool
    """Move the loaded model to the run's device and dtype (the organism loads on CPU in float32)."""


def _name(path: str) -> str:
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json", ".txt"):
        name = name.removesuffix(suffix)
    return name


def _pairs(cfg: GeometryRunConfig) -> tuple[tuple[str, str], ...]:
    return tuple(zip(map(_name, cfg.datasets), map(_name, cfg.controls), strict=False))


# --- checks (seconds; nothing is trained or loaded) ------------------------------------------------------


def _organism_configs(cfg: GeometryRunConfig) -> tuple[OrganismConfig, OrganismSAEConfig | None]:
    """The organism to train and, when no SAE spec is given, the SAEs to train on it."""
    from spillover.organism import OrganismConfig
    from spillover.organism.inputs import OrganismSAEConfig
    from spillover.sae.train import SAETrainConfig

    seed = cfg.organism_seed
    ocfg = OrganismConfig.quick(seed) if cfg.organism_quick else OrganismConfig(seed=seed)
    if cfg.sae is not None:
        return ocfg, None
    if cfg.organism_quick:
        sae = SAETrainConfig(d_sae=256, k=8, training_tokens=200_000, batch_size=512)
        return ocfg, OrganismSAEConfig(sae=sae, n_documents=800)
    return ocfg, OrganismSAEConfig(sae=SAETrainConfig(d_sae=cfg.sae_d, k=cfg.sae_k))


def _check_files(cfg: GeometryRunConfig) -> None:
    named = [("--dataset", p) for p in cfg.datasets] + [("--control", p) for p in cfg.controls]
    named += [(f"--{key}", getattr(cfg, key)) for key in ("toxic", "benign", "reference")]
    for flag, path in named:
        if path is not None and not resolve_data(path).is_file():
            raise FileNotFoundError(f"{flag} {path} does not exist (or is not a file)")


def _check_device(device: str | None) -> None:
    import torch

    if device is None:
        return
    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise ValueError(f"device {device!r} is not a torch device (cpu, cuda, cuda:0, ...)") from exc
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but CUDA is not available here; use --device cpu")


def _model_layers(cfg: GeometryRunConfig) -> int | None:
    """The model's decoder-layer count when it is known without loading the model, else None."""
    if cfg.model == "organism":
        return _organism_configs(cfg)[0].model.n_layers
    path = Path(cfg.model).expanduser()
    if not path.exists():
        if cfg.model.startswith((".", "/", "~")):
            raise FileNotFoundError(f"model folder {cfg.model} does not exist")
        return None  # a hub id, a GGUF file or a package: checked when it is loaded
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{path} is not a model folder (no config.json)")
    fields = json.loads(config.read_text(encoding="utf-8"))
    value = next((fields[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if k in fields), None)
    return value if isinstance(value, int) else None


def _check_hub_saes(hub: Sequence[tuple[str, str]]) -> None:
    """``release:sae_id`` names, against SAELens' pretrained directory (no download)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from spillover.sae.load import SAELoadError

    directory = get_pretrained_saes_directory()
    for release, sae_id in hub:
        if release not in directory:
            if "/" not in release:  # SAELens also takes a hub repo id as the release
                raise SAELoadError(
                    f"SAE release {release!r} is not in SAELens' pretrained directory "
                    f"(e.g. {sorted(directory)[:3]}) and is not a hub repo id"
                )
        elif sae_id not in directory[release].saes_map:
            valid = list(directory[release].saes_map)
            raise SAELoadError(f"sae_id {sae_id!r} not in SAE release {release!r}; valid: {valid[:5]}…")


def _check_sae_spec(spec: str, layers: Sequence[int]) -> list[int | None]:
    """Check that every SAE ``spec`` names exists; returns the layers it covers (None: from metadata)."""
    from spillover.sae.load import SAELoadError, expand_sae_spec

    expanded = expand_sae_spec(spec, list(layers) or None)
    hub: list[tuple[str, str]] = []
    for one, _ in expanded:
        path = Path(one)
        if path.is_dir():
            if not (path / "cfg.json").is_file():
                raise SAELoadError(f"SAE folder {path} has no cfg.json (not a SAELens SAE)")
            continue
        release, sep, sae_id = one.partition(":")
        if not sep or not release or not sae_id:
            raise SAELoadError(
                f"SAE {one!r} is neither an existing folder nor 'release:sae_id' "
                "(e.g. 'gemma-scope-2b-pt-res-canonical:layer_12/width_16k/canonical')"
            )
        hub.append((release, sae_id))
    if hub:
        _check_hub_saes(hub)
    return [layer for _, layer in expanded]


def _check_layers(cfg: GeometryRunConfig, gcfg: GeometryConfig) -> None:
    n_layers = _model_layers(cfg)
    if cfg.sae is not None:
        covered = _check_sae_spec(cfg.sae, cfg.layers)
        analysed = [layer for layer in covered if layer is not None]
    else:
        analysed = list(cfg.layers) or list(range(n_layers or 0))
    if n_layers is not None:
        beyond = [layer for layer in (*cfg.layers, *analysed) if layer >= n_layers]
        if beyond:
            raise ValueError(
                f"layers {sorted(set(beyond))} do not exist: {cfg.model} has layers 0..{n_layers - 1}"
            )
    missing = [layer for layer in gcfg.risk_layers if analysed and layer not in analysed]
    if missing:
        raise ValueError(f"geometry.risk_layers {missing} are not among the analysed layers {analysed}")


def check_geometry_inputs(cfg: GeometryRunConfig) -> GeometryConfig:
    """Check every input of ``run_geometry`` in seconds, before any training or model loading.

    Returns:
        The resolved geometry settings.

    Raises:
        ConfigError: ``cfg.geometry`` has an unknown key or a bad value.
        FileNotFoundError: a named file, model folder or SAE folder does not exist.
        ValueError: a missing required input, a layer the model or the SAEs lack, an SAE spec that names
            no SAE, a device that is not available (``SAELoadError`` is a ValueError).
    """
    from spillover.config import load_config
    from spillover.geometry.report import GeometryConfig

    gcfg = load_config(GeometryConfig, cfg.geometry or {})
    if cfg.model == "organism":
        _organism_configs(cfg)  # builds (and so validates) the organism's and its SAEs' configs
    else:
        if cfg.sae is None:
            raise ValueError("--sae is required for a model other than the organism")
        if not cfg.datasets or cfg.toxic is None or cfg.benign is None:
            raise ValueError(
                "--dataset, --toxic and --benign are required for a model other than the organism"
            )
    _check_files(cfg)
    _check_device(cfg.device)
    _check_layers(cfg, gcfg)
    return gcfg


# --- inputs -----------------------------------------------------------------------------------------------


def _read_user_texts(cfg: GeometryRunConfig) -> _UserTexts:
    """Read the named files now, so a malformed line fails before the organism trains."""

    def maybe(path: str | None) -> list[Any] | None:
        return read_texts(resolve_data(path)) if path else None

    datasets = {_name(p): read_texts(resolve_data(p)) for p in (*cfg.datasets, *cfg.controls)}
    return _UserTexts(datasets, maybe(cfg.toxic), maybe(cfg.benign), maybe(cfg.reference))


def _organism_source(cfg: GeometryRunConfig, texts: _UserTexts, root: str | Path | None) -> _Source:
    """Train (or reuse) the organism and its SAEs; its datasets and corpora are the defaults."""
    from spillover.organism import load_organism, train_organism
    from spillover.organism.inputs import organism_inputs, train_organism_saes

    ocfg, sae_cfg = _organism_configs(cfg)
    art = train_organism(ocfg, root=root)
    sae_spec = str(train_organism_saes(art, sae_cfg, root=root)) if sae_cfg is not None else cfg.sae
    assert sae_spec is not None

    def load_model() -> tuple[Any, Any]:
        return load_organism(art.model_dir)

    def load_data() -> GeometryInputs:
        o = organism_inputs(art, toxic_domains=cfg.toxic_domains)  # type: ignore[arg-type]
        return GeometryInputs(
            datasets={**o.datasets, **texts.datasets},
            toxic=texts.toxic if texts.toxic is not None else o.toxic,
            benign=texts.benign if texts.benign is not None else o.benign,
            reference=texts.reference if texts.reference is not None else o.reference,
            pairs=o.pairs + _pairs(cfg),
            roles=dict(o.roles),
        )

    return _Source(sae_spec, {"model": art.run_dir, "data": art.data_dir}, load_model, load_data, cast=True)


def _model_source(cfg: GeometryRunConfig, texts: _UserTexts, device: str) -> _Source:
    """A model from any source ``spillover.models`` loads, with the user's SAEs and files."""
    assert cfg.sae is not None and texts.toxic is not None and texts.benign is not None

    def load_model() -> tuple[Any, Any]:
        from spillover.models import ModelSpec, load_model

        loaded = load_model(ModelSpec(source=cfg.model, dtype=cfg.dtype, device=device))  # type: ignore[arg-type]
        return loaded.model, loaded.tokenizer

    # Paired datasets are compared as inducing vs control; unpaired ones are just scored.
    roles = {_name(p): "dataset" for p in cfg.datasets[len(cfg.controls) :]}
    data = GeometryInputs(texts.datasets, texts.toxic, texts.benign, texts.reference, _pairs(cfg), roles)
    model = Path(cfg.model) if Path(cfg.model).exists() else cfg.model
    return _Source(cfg.sae, {"model": model}, load_model, lambda: data, cast=False)


def _file_inputs(cfg: GeometryRunConfig, sae_spec: str) -> dict[str, Any]:
    inputs: dict[str, Any] = {f"dataset_{i}": Path(p) for i, p in enumerate((*cfg.datasets, *cfg.controls))}
    for key in ("toxic", "benign", "reference"):
        value = getattr(cfg, key)
        if value:
            inputs[key] = Path(value)
    sae_path = Path(sae_spec)
    inputs["sae"] = sae_path if sae_path.exists() else sae_spec
    return inputs


# --- the stage --------------------------------------------------------------------------------------------


def run_geometry(cfg: GeometryRunConfig, *, force: bool = False, root: str | Path | None = None) -> Path:
    """Run (or reuse) the ``geometry`` stage for a config; returns the stage folder with geometry.json.

    Every input is checked first (``check_geometry_inputs``), so a bad one fails in seconds, before the
    organism or its SAEs are trained.
    """
    import torch

    from spillover.config import to_dict
    from spillover.geometry.report import geometry_report, write_geometry_report
    from spillover.rundir import run_stage
    from spillover.sae.load import load_saes

    gcfg = check_geometry_inputs(cfg)
    texts = _read_user_texts(cfg)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.model == "organism":
        source = _organism_source(cfg, texts, root)
    else:
        source = _model_source(cfg, texts, device)
    inputs = {**source.inputs, **_file_inputs(cfg, source.sae_spec)}
    config = {**to_dict(cfg), "geometry": to_dict(gcfg), "resolved_sae": str(source.sae_spec)}

    def fn(out: Path) -> None:
        model, tokenizer = source.load_model()
        if source.cast:
            model.to(device=device, dtype=getattr(torch, cfg.dtype))
        saes = load_saes(source.sae_spec, model, list(cfg.layers) or None, device=device)
        data = source.load_data()
        meta = {"model": cfg.model, "sae": source.sae_spec, "dtype": cfg.dtype, "device": device}
        result = geometry_report(
            model,
            tokenizer,
            saes,
            data.datasets,
            toxic=data.toxic,
            benign=data.benign,
            reference=data.reference,
            roles=data.roles,  # type: ignore[arg-type]
            pairs=data.pairs,
            cfg=gcfg,
            meta=meta,
        )
        write_geometry_report(result.report, out)

    return run_stage("geometry", config, fn, root=root, inputs=inputs, force=force)
