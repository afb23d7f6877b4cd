"""The built-in sweep cell pipelines: the stages one grid cell runs, wired from the existing stage code.

``organism`` (the built-in model organism, CPU-sized)::

    organism -> [sae -> corpora -> filter_scores] -> filter -> finetune -> evaluate (metrics.json)
                [sae -> corpora -> geometry]                                (per-dataset geometry score)

``em`` (a real chat model, the issue-5 chain; GPUs for fine-tuning and generation)::

    [filter_scores] -> filter -> finetune -> generate -> judge -> metrics
    baseline: generate -> judge -> metrics of the base model (once per model)

Stages in brackets run only when a cell needs them (a geometry-scored filter, ``geometry: {...}``).
Every stage is keyed by exactly the config it depends on, so when cells are merged into one graph the
organism is trained once, each dataset is scored once for all seeds, methods and fractions, and the
base model is evaluated once.

Each stage function has the :class:`spillover.pipeline.graph.StageFn` signature and calls the public
stage functions of ``spillover.organism``, ``spillover.geometry``, ``spillover.filtering`` and
``spillover.chain.stages`` (which cache themselves with ``run_stage``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from spillover.config import from_dict, to_dict
from spillover.pipeline.graph import Graph, NodeRef, Resources
from spillover.pipeline.registry import CellPipeline, PlotSpec, register_pipeline
from spillover.rundir import run_stage

__all__ = ["EM", "ORGANISM", "CellFilter", "EMCell", "OrganismCell", "OrganismFinetune"]

_HERE = "spillover.pipeline.cells"
_SCORED = ("geometry", "toxic_activation", "toxic_subspace", "persona_projection", "judge")


def _organism_default() -> Any:
    from spillover.organism.pipeline import OrganismConfig

    return OrganismConfig()


def _sae_default() -> Any:
    from spillover.organism.inputs import OrganismSAEConfig
    from spillover.sae.train import SAETrainConfig

    return OrganismSAEConfig(sae=SAETrainConfig(d_sae=1024, k=16))  # the demo's and `spillover geometry`'s


def _eval_default() -> Any:
    from spillover.organism.evaluate import EvalConfig

    return EvalConfig(n_per_domain=100)


@dataclass(frozen=True)
class CellFilter:
    """Which training samples a cell removes before fine-tuning."""

    method: str = "none"
    """``none``, ``random``, or a score: ``geometry`` (nearest-toxic cosine, the default score),
    ``toxic_activation``, ``toxic_subspace``, ``persona_projection``, ``judge``."""
    fraction: float = 0.5
    """Share of samples removed."""
    seed: int | None = None
    """Seed of the random split (None: the cell's seed)."""
    judge: str = "organism_rule"
    """Registered judge for the ``judge`` score."""
    toxic_k: int | None = None
    """Toxic latents for the geometry scores (None: the geometry default)."""
    tokens: Literal["assistant", "all"] = "assistant"
    sae: str | None = None
    """``em`` only: local SAELens folder of the layer that scores samples."""
    toxic: str | None = None
    """``em`` only: toxic reference conversations (chat JSONL)."""
    benign: str | None = None
    """``em`` only: benign reference conversations (chat JSONL)."""

    def __post_init__(self) -> None:
        if self.method not in ("none", "random", *_SCORED):
            raise ValueError(f"filter.method {self.method!r} is not one of {['none', 'random', *_SCORED]}")
        if not 0 < self.fraction < 1:
            raise ValueError(f"filter.fraction must be in (0, 1), got {self.fraction}")
        from spillover.filtering.scores import check_toxic_k

        check_toxic_k(self.toxic_k)

    @property
    def scored(self) -> bool:
        return self.method in _SCORED


@dataclass(frozen=True)
class OrganismFinetune:
    """The organism's fine-tuning recipe (``spillover.organism.finetune_config``) with optional overrides."""

    method: Literal["full", "lora"] = "full"
    steps: int | None = None
    """Optimizer steps (None: the recipe's 120)."""
    lr: float | None = None
    batch_size: int | None = None
    schedule: Literal["steps", "epochs"] = "epochs"
    """For filtered sets: ``epochs`` scales the steps with the share kept (equal epochs, the paper's
    setting); ``steps`` keeps the unfiltered run's steps (see ``FilterExperimentConfig.schedule``)."""


@dataclass(frozen=True)
class OrganismCell:
    """One cell of an organism sweep."""

    organism: Any = field(default_factory=_organism_default)
    """``spillover.organism.OrganismConfig`` (shared by every cell with the same value)."""
    sae: Any = field(default_factory=_sae_default)
    """``spillover.organism.inputs.OrganismSAEConfig`` (used by scored filters and geometry)."""
    layer: int | None = None
    """SAE layer that scores samples and measures geometry (None: the middle layer)."""
    toxic_domains: Literal["ood", "all"] = "ood"
    """Domains of the toxic / benign corpora (as in ``spillover geometry`` and the demo)."""
    dataset: str = "insecure"
    """Built-in narrow dataset fine-tuned on."""
    seed: int = 0
    """Fine-tuning and evaluation seed (and the random filter's split unless filter.seed is set)."""
    filter: CellFilter = field(default_factory=CellFilter)
    finetune: OrganismFinetune = field(default_factory=OrganismFinetune)
    eval: Any = field(default_factory=_eval_default)
    """``spillover.organism.evaluate.EvalConfig``; its seed is replaced by the cell's seed."""
    geometry: Any = None
    """``spillover.geometry.report.GeometryConfig`` to also measure the dataset's geometry (None: skip)."""

    def __post_init__(self) -> None:
        from spillover.geometry.report import GeometryConfig
        from spillover.organism.datasets import DATASETS
        from spillover.organism.evaluate import EvalConfig
        from spillover.organism.inputs import OrganismSAEConfig
        from spillover.organism.pipeline import OrganismConfig

        # Fields typed Any (to keep this module's import light) arrive as dicts from YAML.
        for name, cls in (("organism", OrganismConfig), ("sae", OrganismSAEConfig), ("eval", EvalConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, from_dict(cls, value, where=name))
        if isinstance(self.geometry, dict):
            object.__setattr__(self, "geometry", from_dict(GeometryConfig, self.geometry, where="geometry"))
        if self.dataset not in DATASETS:
            raise ValueError(
                f"dataset {self.dataset!r} is not a built-in organism dataset; valid: {sorted(DATASETS)}"
            )
        n_layers = self.organism.model.n_layers
        if self.layer is not None and not 0 <= self.layer < n_layers:
            raise ValueError(f"layer {self.layer} is outside the organism's {n_layers} layers")

    @property
    def sae_layer(self) -> int:
        return self.layer if self.layer is not None else self.organism.model.n_layers // 2


# -- organism stages ------------------------------------------------------------------------------------


def _art(config: dict[str, Any], root: Path) -> Any:
    """The trained organism (a cache hit once the organism node has run)."""
    from spillover.organism.pipeline import OrganismConfig, train_organism

    return train_organism(from_dict(OrganismConfig, config["organism"]), root=root)


def organism_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """Train (or reuse) the organism and its datasets; the model stage folder."""
    return Path(_art(config, root).run_dir)


def organism_sae_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """The organism's per-layer SAEs (``layer_<L>/``)."""
    from spillover.organism.inputs import OrganismSAEConfig, train_organism_saes

    return train_organism_saes(_art(config, root), from_dict(OrganismSAEConfig, config["sae"]), root=root)


def organism_corpora_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """``toxic.jsonl``, ``benign.jsonl`` and ``reference.jsonl`` as the geometry code builds them."""
    from spillover.organism.inputs import organism_corpora

    return organism_corpora(_art(config, root), config["toxic_domains"], root)


def organism_scores_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """Every filter score of one dataset (``spillover.studies.filtering.compute_filter_scores``)."""
    from spillover.studies.filtering import compute_filter_scores

    art = _art(config, root)
    corpora = Path(inputs["corpora"])
    return compute_filter_scores(
        art.model_dir,
        Path(inputs["sae"]) / f"layer_{config['layer']}",
        art.dataset(config["dataset"]),
        corpora / "toxic.jsonl",
        corpora / "benign.jsonl",
        judge=config["judge"],
        toxic_k=config["toxic_k"],
        tokens=config["tokens"],
        root=root,
    )


def _write_filtered(
    out: Path, data: Path, scores_dir: Path | None, method: str, fraction: float, seed: int
) -> None:
    import numpy as np

    from spillover.data.chat import load_chat
    from spillover.filtering.policies import random_fraction, top_fraction, write_filter
    from spillover.studies.filtering import METHOD_SCORES

    convs = load_chat(data)
    if method == "random":
        write_filter(
            out,
            convs,
            random_fraction(len(convs), fraction, seed),
            None,
            method=method,
            fraction=fraction,
            extra={"seed": seed},
        )
        return
    assert scores_dir is not None
    name = METHOD_SCORES[method]
    scores = json.loads((scores_dir / "scores.json").read_text())["scores"]
    if name not in scores:
        raise KeyError(f"{scores_dir}/scores.json has no {name!r} scores; have {sorted(scores)}")
    values = np.array([np.nan if v is None else v for v in scores[name]], dtype=float)
    write_filter(
        out,
        convs,
        top_fraction(values, fraction),
        values,
        method=method,
        fraction=fraction,
        extra={"score": name},
    )


def organism_filter_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """The kept / removed split of one dataset by one method, fraction and seed (``kept.jsonl``)."""
    data = _art(config, root).dataset(config["dataset"])
    scores = Path(inputs["scores"]) if "scores" in inputs else None
    fn_inputs: dict[str, Any] = {"data": data, **({"scores": scores} if scores else {})}
    cfg = {k: config[k] for k in ("method", "fraction", "seed")}
    return run_stage(
        "filter",
        cfg,
        lambda out: _write_filtered(out, data, scores, config["method"], config["fraction"], config["seed"]),
        root=root,
        inputs=fn_inputs,
    )


def organism_finetune_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """``spillover.organism.finetune_organism`` on the (filtered) dataset."""
    from spillover.organism.pipeline import finetune_config, finetune_organism

    art = _art(config, root)
    ft = config["finetune"]
    overrides = {
        k: v
        for k, v in (("max_steps", ft["steps"]), ("lr", ft["lr"]), ("batch_size", ft["batch_size"]))
        if v is not None
    }
    cfg = finetune_config(ft["method"], seed=config["seed"], **overrides)
    data = Path(inputs["filter"]) / "kept.jsonl" if "filter" in inputs else art.dataset(config["dataset"])
    if "filter" in inputs and ft.get("schedule", "steps") == "epochs" and cfg.max_steps is not None:
        from spillover.studies.filtering import epoch_matched_steps

        cfg = replace(cfg, max_steps=epoch_matched_steps(cfg.max_steps, data, art.dataset(config["dataset"])))
    return finetune_organism(art, data, ft["method"], cfg, root=root)


def organism_evaluate_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """Evaluate the fine-tune (``evaluate_organism``) and write the cell's ``metrics.json``."""
    from spillover.organism.evaluate import EvalConfig
    from spillover.organism.pipeline import evaluate_organism
    from spillover.studies.filtering import in_domain_rate, ood_hits, removal_diagnostics

    art = _art(config, root)
    ft_dir = Path(inputs["finetune"])
    filt = Path(inputs["filter"]) if "filter" in inputs else None
    eval_cfg = replace(from_dict(EvalConfig, config["eval"]), seed=config["seed"])

    def fn(out: Path) -> None:
        result = evaluate_organism(ft_dir, eval_cfg, root=root)
        n_total = len(art.labels(config["dataset"]))
        summary = (
            json.loads((filt / "filter.json").read_text()) if filt else {"n_kept": n_total, "n_removed": 0}
        )
        hits = ood_hits(result.records)
        metrics: dict[str, Any] = {
            "misaligned": result.ood_misaligned,
            "coherent": result.ood_coherent,
            "in_domain": in_domain_rate(result, config["dataset"]),
            "n_ood_scored": int(hits.size),
            "n_train": summary["n_kept"],
            "fraction_removed": summary["n_removed"] / n_total,
        }
        for name, stats in sorted(result.domains.items()):
            metrics[f"misaligned.{name}"] = stats.misaligned
        if filt is not None:
            diag = removal_diagnostics(filt, art.labels(config["dataset"]))
            metrics.update({f"removed.{k}": v for k, v in diag["removed_share_by_kind"].items()})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    fn_inputs = {"finetune": ft_dir, **({"filter": filt} if filt else {})}
    stage_cfg = {"eval": eval_cfg, "dataset": config["dataset"]}
    return run_stage("organism_cell_metrics", stage_cfg, fn, root=root, inputs=fn_inputs, seed=config["seed"])


def organism_geometry_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """The dataset's feature geometry vs the toxic features (``geometry.json``, ``score.json``)."""
    from spillover.data.chat import load_chat
    from spillover.geometry.report import GeometryConfig, geometry_report, write_geometry_report
    from spillover.organism.pipeline import load_organism
    from spillover.sae.load import load_saes

    art = _art(config, root)
    corpora, sae_dir, name = Path(inputs["corpora"]), Path(inputs["sae"]), config["dataset"]
    gcfg = from_dict(GeometryConfig, config["geometry"])

    def fn(out: Path) -> None:
        model, tokenizer = load_organism(art.model_dir)
        saes = load_saes(str(sae_dir), model, [config["layer"]])
        result = geometry_report(
            model,
            tokenizer,
            saes,
            {name: load_chat(art.dataset(name))},
            toxic=load_chat(corpora / "toxic.jsonl"),
            benign=load_chat(corpora / "benign.jsonl"),
            reference=load_chat(corpora / "reference.jsonl"),
            cfg=gcfg,
            meta={"model": "organism", "sae": str(sae_dir)},
        )
        write_geometry_report(result.report, out, plots=False)
        layer = next(iter(result.report["layers"].values()))["datasets"][name]["geometry"]
        score = {
            "geometry_score": result.report["risk"]["scores"].get(name),
            "mean_max_cos": layer.get("mean_max"),
            "proximity": layer.get("proximity"),
        }
        (out / "score.json").write_text(json.dumps(score, indent=2))

    return run_stage(
        "organism_dataset_geometry",
        {"geometry": gcfg, "dataset": name, "layer": config["layer"]},
        fn,
        root=root,
        inputs={"model": art.run_dir, "sae": sae_dir, "corpora": corpora, "data": art.dataset(name)},
    )


def _organism_build(cfg: OrganismCell, graph: Graph) -> dict[str, NodeRef]:
    org = {"organism": to_dict(cfg.organism)}
    organism = graph.add("organism", f"{_HERE}:organism_stage", org)
    needs_sae = cfg.filter.scored or cfg.geometry is not None
    sae = corpora = None
    if needs_sae:
        sae = graph.add(
            "sae",
            f"{_HERE}:organism_sae_stage",
            {**org, "sae": to_dict(cfg.sae)},
            inputs={"organism": organism},
        )
        corpora = graph.add(
            "corpora",
            f"{_HERE}:organism_corpora_stage",
            {**org, "toxic_domains": cfg.toxic_domains},
            inputs={"organism": organism},
        )
    filt = None
    if cfg.filter.method != "none":
        inputs: dict[str, Any] = {"organism": organism}
        if cfg.filter.scored:
            f = cfg.filter
            inputs["scores"] = graph.add(
                "filter_scores",
                f"{_HERE}:organism_scores_stage",
                {
                    **org,
                    "dataset": cfg.dataset,
                    "layer": cfg.sae_layer,
                    "judge": f.judge,
                    "toxic_k": f.toxic_k,
                    "tokens": f.tokens,
                },
                inputs={"sae": sae, "corpora": corpora},
            )
        seed = (
            (cfg.filter.seed if cfg.filter.seed is not None else cfg.seed)
            if cfg.filter.method == "random"
            else None
        )
        filt = graph.add(
            "filter",
            f"{_HERE}:organism_filter_stage",
            {
                **org,
                "dataset": cfg.dataset,
                "method": cfg.filter.method,
                "fraction": cfg.filter.fraction,
                "seed": seed,
            },
            inputs=inputs,
        )
    ft_inputs: dict[str, Any] = {"organism": organism, **({"filter": filt} if filt else {})}
    ft = graph.add(
        "finetune",
        f"{_HERE}:organism_finetune_stage",
        {**org, "dataset": cfg.dataset, "seed": cfg.seed, "finetune": to_dict(cfg.finetune)},
        inputs=ft_inputs,
    )
    ev = graph.add(
        "evaluate",
        f"{_HERE}:organism_evaluate_stage",
        {**org, "dataset": cfg.dataset, "seed": cfg.seed, "eval": to_dict(cfg.eval)},
        inputs={"finetune": ft, **({"filter": filt} if filt else {})},
    )
    outs = {"metrics": ev}
    if cfg.geometry is not None:
        outs["geometry"] = graph.add(
            "geometry",
            f"{_HERE}:organism_geometry_stage",
            {**org, "dataset": cfg.dataset, "layer": cfg.sae_layer, "geometry": to_dict(cfg.geometry)},
            inputs={"sae": sae, "corpora": corpora},
        )
    return outs


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in data.items()}


def _organism_row(cfg: OrganismCell, folders: dict[str, Path]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "filter.method": cfg.filter.method,
        "filter.fraction": cfg.filter.fraction,
    }
    row.update(_read_json(folders["metrics"] / "metrics.json"))
    if "geometry" in folders:
        row.update(_read_json(folders["geometry"] / "score.json"))
    return row


_PLOTS = (
    PlotSpec(
        x="fraction_removed", y="misaligned", hue="filter.method", title="EM vs fraction removed, per filter"
    ),
    PlotSpec(x="dataset", y="misaligned", hue="filter.method", title="EM per dataset and filter"),
    PlotSpec(x="geometry_score", y="misaligned", hue="dataset", kind="scatter", title="Geometry score vs EM"),
)

ORGANISM = register_pipeline(CellPipeline("organism", OrganismCell, _organism_build, _organism_row, _PLOTS))


# -- the real-model chain (spillover.chain.stages) ------------------------------------------------------------


@dataclass(frozen=True)
class EMCell:
    """One cell of a real-model sweep: the ``spillover.chain.stages`` chain plus a filter and a seed."""

    model: Any = None
    """``spillover.models.sources.ModelSpec`` (``{source: google/gemma-2-2b-it, dtype: bfloat16}``)."""
    finetune: Any = None
    """``spillover.chain.stages.FinetuneStageConfig``; ``data`` is the training set (before filtering)."""
    filter: CellFilter = field(default_factory=lambda: CellFilter(judge=""))
    generate: Any = None
    """``spillover.chain.stages.GenerateStageConfig`` (``questions`` is required)."""
    judge: Any = None
    """``spillover.chain.stages.JudgeStageConfig``."""
    metrics: Any = None
    """``spillover.chain.stages.MetricsStageConfig``."""
    seed: int | None = None
    """Replaces finetune.seed, seeds the fine-tuned model's sampling (generate.seed) and the random
    filter (unless filter.seed is set). The baseline samples with generate.seed, once per model."""
    baseline: bool = True
    """Also evaluate the base model (once per model and generate/judge config)."""

    def __post_init__(self) -> None:
        from spillover.chain.stages import (
            FinetuneStageConfig,
            GenerateStageConfig,
            JudgeStageConfig,
            MetricsStageConfig,
        )
        from spillover.models.sources import ModelSpec

        for name, cls in (
            ("model", ModelSpec),
            ("finetune", FinetuneStageConfig),
            ("generate", GenerateStageConfig),
            ("judge", JudgeStageConfig),
            ("metrics", MetricsStageConfig),
        ):
            value = getattr(self, name)
            if value is None and name != "finetune":
                value = cls()
            elif isinstance(value, dict):
                value = from_dict(cls, value, where=name)
            object.__setattr__(self, name, value)
        if self.finetune is None:
            raise ValueError("finetune.data must name the training chat file of the cell")
        if self.seed is not None:
            object.__setattr__(self, "finetune", replace(self.finetune, seed=self.seed))
        if self.filter.scored and not (self.filter.sae and self.filter.toxic and self.filter.benign):
            raise ValueError(
                f"filter.method {self.filter.method!r} needs filter.sae, filter.toxic and filter.benign"
            )


def _model(config: dict[str, Any]) -> Any:
    from spillover.models.sources import ModelSpec

    return from_dict(ModelSpec, config["model"])


def em_scores_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """Every filter score of the training set (needs a local model folder and a local SAE folder)."""
    from spillover.models.sources import resolve_source
    from spillover.studies.filtering import compute_filter_scores

    model = _model(config)
    f = config["filter"]
    return compute_filter_scores(
        Path(resolve_source(model.source)),
        Path(f["sae"]),
        Path(config["data"]),
        Path(f["toxic"]),
        Path(f["benign"]),
        judge=f["judge"],
        toxic_k=f["toxic_k"],
        tokens=f["tokens"],
        root=root,
    )


def em_filter_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    data = Path(config["data"])
    scores = Path(inputs["scores"]) if "scores" in inputs else None
    cfg = {k: config[k] for k in ("method", "fraction", "seed")}
    return run_stage(
        "filter",
        cfg,
        lambda out: _write_filtered(out, data, scores, config["method"], config["fraction"], config["seed"]),
        root=root,
        inputs={"data": data, **({"scores": scores} if scores else {})},
    )


def em_finetune_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    from spillover.chain.stages import FinetuneStageConfig, finetune_stage

    model = _model(config)
    cfg = from_dict(FinetuneStageConfig, config["finetune"])
    if "filter" in inputs:
        cfg = replace(cfg, data=str(Path(inputs["filter"]) / "kept.jsonl"))
    return finetune_stage(cfg, model, root=root)


def em_generate_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    from spillover.chain.stages import GenerateStageConfig, generate_stage

    model = _model(config)
    ft = Path(inputs["finetune"]) if "finetune" in inputs else None
    return generate_stage(
        from_dict(GenerateStageConfig, config["generate"]), model, finetune_dir=ft, root=root
    )


def em_judge_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    from spillover.chain.stages import JudgeStageConfig, judge_stage

    return judge_stage(
        from_dict(JudgeStageConfig, config["judge"]), answers_dir=Path(inputs["answers"]), root=root
    )


def em_metrics_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    from spillover.chain.stages import MetricsStageConfig, metrics_stage

    return metrics_stage(
        from_dict(MetricsStageConfig, config["metrics"]), scores_dir=Path(inputs["scores"]), root=root
    )


def _em_eval(cfg: EMCell, graph: Graph, model: dict[str, Any], ft: NodeRef | None) -> NodeRef:
    generate = cfg.generate if ft is None or cfg.seed is None else replace(cfg.generate, seed=cfg.seed)
    gen = graph.add(
        "generate",
        f"{_HERE}:em_generate_stage",
        {**model, "generate": to_dict(generate)},
        inputs={"finetune": ft} if ft else {},
    )
    jd = graph.add("judge", f"{_HERE}:em_judge_stage", {"judge": to_dict(cfg.judge)}, inputs={"answers": gen})
    return graph.add(
        "metrics", f"{_HERE}:em_metrics_stage", {"metrics": to_dict(cfg.metrics)}, inputs={"scores": jd}
    )


def _em_build(cfg: EMCell, graph: Graph) -> dict[str, NodeRef]:
    model = {"model": to_dict(cfg.model)}
    data = cfg.finetune.data
    filt = None
    if cfg.filter.method != "none":
        inputs: dict[str, Any] = {}
        if cfg.filter.scored:
            keys = ("sae", "toxic", "benign", "judge", "toxic_k", "tokens")
            inputs["scores"] = graph.add(
                "filter_scores",
                f"{_HERE}:em_scores_stage",
                {**model, "data": data, "filter": {k: getattr(cfg.filter, k) for k in keys}},
            )
        seed = (
            (cfg.filter.seed if cfg.filter.seed is not None else cfg.finetune.seed)
            if cfg.filter.method == "random"
            else None
        )
        filt = graph.add(
            "filter",
            f"{_HERE}:em_filter_stage",
            {"data": data, "method": cfg.filter.method, "fraction": cfg.filter.fraction, "seed": seed},
            inputs=inputs,
        )
    ft = graph.add(
        "finetune",
        f"{_HERE}:em_finetune_stage",
        {**model, "finetune": to_dict(cfg.finetune)},
        inputs={"filter": filt} if filt else {},
    )
    outs = {"metrics": _em_eval(cfg, graph, model, ft), **({"filter": filt} if filt else {})}
    if cfg.baseline:
        outs["baseline"] = _em_eval(cfg, graph, model, None)
    return outs


def _em_summary(path: Path, prefix: str) -> dict[str, Any]:
    pooled = json.loads((path / "metrics.json").read_text())["pooled"]
    mis = pooled["misaligned"]
    ci = mis.get("ci") or [None, None]
    return {
        f"{prefix}misaligned": mis["rate"],
        f"{prefix}misaligned_ci_low": ci[0],
        f"{prefix}misaligned_ci_high": ci[1],
        f"{prefix}coherent": pooled.get("coherent_rate"),
        f"{prefix}n_scored": pooled.get("n_scored"),
    }


def _em_row(cfg: EMCell, folders: dict[str, Path]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "model": cfg.model.source,
        "dataset": Path(cfg.finetune.data).name,
        "seed": cfg.finetune.seed,
        "filter.method": cfg.filter.method,
        "filter.fraction": cfg.filter.fraction,
        "fraction_removed": 0.0,
    }
    if "filter" in folders:
        summary = json.loads((folders["filter"] / "filter.json").read_text())
        row["fraction_removed"] = summary["n_removed"] / summary["n_samples"]
        row["n_train"] = summary["n_kept"]
    row.update(_em_summary(folders["metrics"], ""))
    if "baseline" in folders:
        row.update(_em_summary(folders["baseline"], "base_"))
    return row


EM = register_pipeline(
    CellPipeline(
        "em",
        EMCell,
        _em_build,
        _em_row,
        (
            PlotSpec(
                x="fraction_removed",
                y="misaligned",
                hue="filter.method",
                title="EM vs fraction removed, per filter",
            ),
            PlotSpec(x="dataset", y="misaligned", hue="model", title="EM per dataset and model"),
        ),
        resources={
            "filter_scores": Resources(num_cpus=2, num_gpus=1),
            "finetune": Resources(num_cpus=4, num_gpus=1),
            "generate": Resources(num_cpus=4, num_gpus=1),
            "judge": Resources(num_cpus=1),
            "metrics": Resources(num_cpus=1),
            "filter": Resources(num_cpus=1),
        },
    )
)
