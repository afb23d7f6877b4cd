"""The ``em`` sweep pipeline: one cell fine-tunes a real chat model on one (filtered) dataset with the
``spillover.chain.stages`` chain and measures its emergent misalignment; the base model is evaluated once.

    [filter_scores] -> filter -> finetune -> generate -> judge -> metrics
    baseline: generate -> judge -> metrics of the base model (once per model)

Paths in a cell (training data, questions, SAE, reference corpora, a local model) are checked before any
stage runs (:func:`em_cell_problems`). See :mod:`spillover.pipeline.cells` for what the built-in
pipelines share, ``docs/sweeps.md`` for the sweep file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spillover.chain.config import (
    FinetuneStageConfig,
    GenerateStageConfig,
    JudgeStageConfig,
    MetricsStageConfig,
)
from spillover.chain.judging import judge_stage
from spillover.chain.stages import finetune_stage, generate_stage, metrics_stage
from spillover.config import from_dict, to_dict
from spillover.data.fetch import DataNotFoundError, resolve_data
from spillover.models.sources import ModelSpec, resolve_source
from spillover.pipeline.cells import CellFilter, filter_stage, judge_problems
from spillover.pipeline.graph import Graph, NodeRef, Resources
from spillover.pipeline.registry import CellPipeline, PlotSpec, register_pipeline

__all__ = ["EM", "EMCell", "em_cell_problems"]

_HERE = "spillover.pipeline.em_cells"
_PATHS = (".", "/", "~")
"""How a local model path is told from a hub id (as ``spillover.models.sources.resolve_source`` does)."""


@dataclass(frozen=True)
class EMCell:
    """One cell of a real-model sweep: the ``spillover.chain.stages`` chain plus a filter and a seed."""

    model: ModelSpec = field(default_factory=ModelSpec)
    """The base model (``{source: google/gemma-2-2b-it, dtype: bfloat16}``)."""
    finetune: FinetuneStageConfig | None = None
    """The fine-tuning recipe; ``data`` is the training set (before filtering). Required."""
    filter: CellFilter = field(default_factory=lambda: CellFilter(judge=""))
    generate: GenerateStageConfig = field(default_factory=GenerateStageConfig)
    """Sampling of answers to the EM questions (``questions`` is required)."""
    judge: JudgeStageConfig = field(default_factory=JudgeStageConfig)
    metrics: MetricsStageConfig = field(default_factory=MetricsStageConfig)
    seed: int | None = None
    """Replaces finetune.seed, seeds the fine-tuned model's sampling (generate.sampling.seed) and the random
    filter (unless filter.seed is set). The baseline samples with generate.sampling.seed, once per model."""
    baseline: bool = True
    """Also evaluate the base model (once per model and generate/judge config)."""

    def __post_init__(self) -> None:
        if self.finetune is None:
            raise ValueError("finetune.data must name the training chat file of the cell")
        if self.seed is not None:
            object.__setattr__(self, "finetune", replace(self.finetune, seed=self.seed))
        if self.filter.scored and not (self.filter.sae and self.filter.toxic and self.filter.benign):
            raise ValueError(
                f"filter.method {self.filter.method!r} needs filter.sae, filter.toxic and filter.benign"
            )

    @property
    def train(self) -> FinetuneStageConfig:
        """The fine-tuning recipe (``finetune``, which ``__post_init__`` requires)."""
        assert self.finetune is not None
        return self.finetune


def _model_problem(source: str) -> tuple[str | None, str | None]:
    """(the local model folder, or None; what is wrong with a local source, or None)."""
    path = Path(source).expanduser()
    if not path.exists():
        return None, (f"model.source: folder {source} does not exist" if source.startswith(_PATHS) else None)
    if path.is_dir() and not (path / "config.json").is_file():
        return None, f"model.source: {source} is not a model folder (no config.json)"
    return (str(path) if path.is_dir() else None), None


def _file_problem(key: str, path: str) -> str | None:
    """Why ``path`` (a file or a registry name) cannot be read, None when it can."""
    try:
        if path and resolve_data(path).expanduser().is_file():
            return None
    except DataNotFoundError as exc:
        return f"{key}: {exc}"
    return f"{key}: file {path!r} does not exist"


def em_cell_problems(cfg: EMCell) -> list[str]:
    """What would make the cell fail once it runs: missing files and unregistered judges (empty: none)."""
    from spillover.filtering.scoring import check_scoring_inputs

    files = [("finetune.data", cfg.train.data), ("generate.questions", cfg.generate.questions)]
    if cfg.judge.prompts_file:
        files.append(("judge.prompts_file", cfg.judge.prompts_file))
    problems = [p for key, path in files if (p := _file_problem(key, path))]
    model_dir, problem = _model_problem(cfg.model.source)
    problems += [problem] if problem else []
    f = cfg.filter
    if f.scored:
        try:
            check_scoring_inputs(model_dir, str(f.sae), Path(str(f.toxic)), Path(str(f.benign)))
        except ValueError as exc:
            problems.append(f"filter: {exc}")
    judges = {"judge.backend": cfg.judge.backend, "filter.judge": f.judge if f.scored else ""}
    return problems + judge_problems(judges)


def _model(config: dict[str, Any]) -> ModelSpec:
    return from_dict(ModelSpec, config["model"])


def em_scores_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """Every filter score of the training set (needs a local model folder and a local SAE folder)."""
    from spillover.studies.filtering import compute_filter_scores

    model = _model(config)
    f = config["filter"]
    return compute_filter_scores(
        Path(resolve_source(model.source)),
        Path(f["sae"]),
        resolve_data(config["data"]),
        Path(f["toxic"]),
        Path(f["benign"]),
        judge=f["judge"],
        toxic_k=f["toxic_k"],
        tokens=f["tokens"],
        root=root,
    )


def em_filter_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """The kept / removed split of the training set by one method, fraction and seed (``kept.jsonl``)."""
    scores = Path(inputs["scores"]) if "scores" in inputs else None
    return filter_stage(resolve_data(config["data"]), scores, config, root)


def em_finetune_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    model = _model(config)
    cfg = from_dict(FinetuneStageConfig, config["finetune"])
    if "filter" in inputs:
        cfg = replace(cfg, data=str(Path(inputs["filter"]) / "kept.jsonl"))
    return finetune_stage(cfg, model, root=root)


def em_generate_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    model = _model(config)
    ft = Path(inputs["finetune"]) if "finetune" in inputs else None
    return generate_stage(
        from_dict(GenerateStageConfig, config["generate"]), model, finetune_dir=ft, root=root
    )


def em_judge_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    return judge_stage(
        from_dict(JudgeStageConfig, config["judge"]), answers_dir=Path(inputs["answers"]), root=root
    )


def em_metrics_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    return metrics_stage(
        from_dict(MetricsStageConfig, config["metrics"]), scores_dir=Path(inputs["scores"]), root=root
    )


def _em_eval(cfg: EMCell, graph: Graph, model: dict[str, Any], ft: NodeRef | None) -> NodeRef:
    generate = (
        cfg.generate
        if ft is None or cfg.seed is None
        else replace(cfg.generate, sampling=replace(cfg.generate.sampling, seed=cfg.seed))
    )
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
    data = cfg.train.data
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
        seed = cfg.filter.split_seed(cfg.train.seed)
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
        "dataset": Path(cfg.train.data).name,
        "seed": cfg.train.seed,
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
        plots=(
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
        check=em_cell_problems,
    )
)
