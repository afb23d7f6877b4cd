"""The ``organism`` sweep pipeline: one cell fine-tunes the built-in model organism on one (filtered)
dataset and evaluates it; shared stages (the organism, its SAEs, corpora and scores) run once per graph.

    organism -> [sae -> corpora -> filter_scores] -> filter -> finetune -> evaluate (metrics.json)
                [sae -> corpora -> geometry]                                (per-dataset geometry score)
                [sae -> corpora -> defense_inputs] -> finetune              (finetune.defense caft / steer)

See :mod:`spillover.pipeline.cells` for what the built-in pipelines share, ``docs/sweeps.md`` for the
sweep file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from spillover.config import ConfigError, from_dict, to_dict
from spillover.data.chat import load_chat
from spillover.finetune import FinetuneConfig
from spillover.geometry.report import GeometryConfig, geometry_report, write_geometry_report
from spillover.organism.datasets import DATASETS
from spillover.organism.evaluate import EvalConfig
from spillover.organism.inputs import (
    OrganismSAEConfig,
    organism_corpora,
    shipped_sae_config,
    train_organism_saes,
)
from spillover.organism.pipeline import (
    OrganismArtifacts,
    OrganismConfig,
    evaluate_organism,
    finetune_config,
    finetune_organism,
    load_organism,
    train_organism,
)
from spillover.organism.tokenizer import build_tokenizer
from spillover.pipeline.cells import CellFilter, filter_stage, judge_problems
from spillover.pipeline.graph import Graph, NodeRef
from spillover.pipeline.registry import CellPipeline, PlotSpec, register_pipeline
from spillover.rundir import run_stage
from spillover.sae.load import load_saes
from spillover.studies.defense_arms import (
    DEFENSES,
    DefenseArmsConfig,
    build_defense_inputs,
    check_inoculation_prompt,
    defense_overrides,
)
from spillover.studies.filtering import compute_filter_scores, epoch_matched_steps
from spillover.studies.filtering_stats import in_domain_rate, ood_hits, removal_diagnostics
from spillover.studies.mitigate import arm_config

__all__ = [
    "CELL_DEFENSES",
    "ORGANISM",
    "OrganismCell",
    "OrganismFinetune",
    "cell_finetune_config",
    "organism_cell_problems",
]

_HERE = "spillover.pipeline.organism_cells"

CELL_DEFENSES = tuple(d for d in DEFENSES if d != "early_stop")
"""The defenses a cell can train with (early stopping picks a checkpoint after training: ``spillover
mitigate --defense early_stop``)."""


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
    defense: str = field(default="none", metadata={"omit_when_default": True})
    """A ready-made training-time defense (``spillover.studies.defense_arms``: caft, steer, kl,
    interleave, inoculate; ``none``), built for the cell's organism (CAFT directions and the persona
    vector from its SAE and corpora, as ``spillover mitigate --defense`` does) and applied before
    ``overrides``. Early stopping picks a checkpoint after training, which a cell does not do."""
    defense_settings: DefenseArmsConfig = field(
        default_factory=DefenseArmsConfig, metadata={"omit_when_default": True}
    )
    """The defense's settings (CAFT directions, steering scale, KL beta, interleave share, prompt)."""
    overrides: dict[str, Any] = field(default_factory=dict, metadata={"omit_when_default": True})
    """More ``FinetuneConfig`` overrides, dotted keys, applied last: e.g. a defense with other inputs,
    ``{"defense.interleave.data": "benign.jsonl", "defense.interleave.share": 0.2}`` (checked before the
    sweep runs)."""

    def __post_init__(self) -> None:
        if self.defense != "none" and self.defense not in CELL_DEFENSES:
            raise ValueError(f"finetune.defense {self.defense!r} is not one of {['none', *CELL_DEFENSES]}")


@dataclass(frozen=True)
class OrganismCell:
    """One cell of an organism sweep."""

    organism: OrganismConfig = field(default_factory=OrganismConfig)
    """The organism (shared by every cell with the same value)."""
    sae: OrganismSAEConfig = field(default_factory=shipped_sae_config)
    """The organism's SAEs (used by scored filters and geometry): the shipped organisms' config, so the
    shipped seeds install theirs."""
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
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(n_per_domain=100))
    """The evaluation; its seed is replaced by the cell's seed."""
    geometry: GeometryConfig | None = None
    """Also measure the dataset's geometry with this config (None: skip)."""

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(
                f"dataset {self.dataset!r} is not a built-in organism dataset; valid: {sorted(DATASETS)}"
            )
        n_layers = self.organism.model.n_layers
        if self.layer is not None and not 0 <= self.layer < n_layers:
            raise ValueError(f"layer {self.layer} is outside the organism's {n_layers} layers")
        if self.needs_sae and self.sae.layers and self.sae_layer not in self.sae.layers:
            raise ValueError(
                f"layer {self.sae_layer} has no SAE: sae.layers is {list(self.sae.layers)}; "
                "add it there or choose one of them with layer"
            )

    @property
    def sae_layer(self) -> int:
        return self.layer if self.layer is not None else self.organism.model.n_layers // 2

    @property
    def needs_sae(self) -> bool:
        """A scored filter, the geometry or a defense built from them needs the organism's SAE and corpora."""
        return self.filter.scored or self.geometry is not None or self.finetune.defense != "none"


# -- organism stages ------------------------------------------------------------------------------------


def _art(config: dict[str, Any], root: Path) -> OrganismArtifacts:
    """The trained organism (a cache hit once the organism node has run)."""

    return train_organism(from_dict(OrganismConfig, config["organism"]), root=root)


def organism_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """Train (or reuse) the organism and its datasets; the model stage folder."""
    return Path(_art(config, root).run_dir)


def organism_sae_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """The organism's per-layer SAEs (``layer_<L>/``)."""

    return train_organism_saes(_art(config, root), from_dict(OrganismSAEConfig, config["sae"]), root=root)


def organism_corpora_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """``toxic.jsonl``, ``benign.jsonl`` and ``reference.jsonl`` as the geometry code builds them."""

    return organism_corpora(_art(config, root), config["toxic_domains"], root)


def organism_scores_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """Every filter score of one dataset (``spillover.studies.filtering.compute_filter_scores``)."""

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


def organism_filter_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """The kept / removed split of one dataset by one method, fraction and seed (``kept.jsonl``)."""
    data = _art(config, root).dataset(config["dataset"])
    scores = Path(inputs["scores"]) if "scores" in inputs else None
    return filter_stage(data, scores, config, root)


def organism_defense_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """The CAFT directions and persona vector of the organism at the cell's layer (``build_defense_inputs``)."""
    return build_defense_inputs(
        _art(config, root),
        Path(inputs["sae"]) / f"layer_{config['layer']}",
        Path(inputs["corpora"]),
        toxic_k=config["toxic_k"],
        tokens=config["tokens"],
        root=root,
    )


def cell_finetune_config(
    ft: dict[str, Any], seed: int, defense: dict[str, Any] | None = None
) -> FinetuneConfig:
    """The organism recipe with a cell's ``finetune`` section (an ``OrganismFinetune`` as a dict) applied;
    ``defense``: the defense's ``FinetuneConfig`` overrides (``defense_overrides``), applied first."""
    named = (("max_steps", ft.get("steps")), ("lr", ft.get("lr")), ("batch_size", ft.get("batch_size")))
    cfg = finetune_config(ft["method"], seed=seed, **{k: v for k, v in named if v is not None})
    if defense:
        cfg = arm_config(cfg, defense, name=f"finetune.defense {ft.get('defense')}")
    if ft.get("overrides"):
        cfg = arm_config(cfg, ft["overrides"], name="finetune.overrides")
    return cfg


def _cell_defense(
    art: OrganismArtifacts, ft: dict[str, Any], inputs: dict[str, Any]
) -> dict[str, Any] | None:
    name = ft.get("defense", "none")
    if name == "none":
        return None
    opts = from_dict(DefenseArmsConfig, ft.get("defense_settings", {}))
    return defense_overrides(
        name,
        opts,
        art,
        inputs=Path(inputs["defense"]) if "defense" in inputs else None,
        corpora=Path(inputs["corpora"]) if "corpora" in inputs else None,
        max_steps=None,
    )


def organism_finetune_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """``spillover.organism.finetune_organism`` on the (filtered) dataset, with the cell's defense."""

    art = _art(config, root)
    ft = config["finetune"]
    cfg = cell_finetune_config(ft, config["seed"], _cell_defense(art, ft, inputs))
    data = Path(inputs["filter"]) / "kept.jsonl" if "filter" in inputs else art.dataset(config["dataset"])
    if "filter" in inputs and ft.get("schedule", "steps") == "epochs" and cfg.max_steps is not None:
        cfg = replace(cfg, max_steps=epoch_matched_steps(cfg.max_steps, data, art.dataset(config["dataset"])))
    return finetune_organism(art, data, ft["method"], cfg, root=root)


def organism_evaluate_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    """Evaluate the fine-tune (``evaluate_organism``) and write the cell's ``metrics.json``."""

    art = _art(config, root)
    ft_dir = Path(inputs["finetune"])
    filt = Path(inputs["filter"]) if "filter" in inputs else None
    eval_cfg = from_dict(EvalConfig, config["eval"])
    eval_cfg = replace(eval_cfg, sampling=replace(eval_cfg.sampling, seed=config["seed"]))

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
    sae = corpora = None
    if cfg.needs_sae:
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
        filt = graph.add(
            "filter",
            f"{_HERE}:organism_filter_stage",
            {
                **org,
                "dataset": cfg.dataset,
                "method": cfg.filter.method,
                "fraction": cfg.filter.fraction,
                "seed": cfg.filter.split_seed(cfg.seed),
            },
            inputs=inputs,
        )
    ft_inputs: dict[str, Any] = {"organism": organism, **({"filter": filt} if filt else {})}
    if cfg.finetune.defense in ("kl", "interleave"):
        ft_inputs["corpora"] = corpora
    if cfg.finetune.defense in ("caft", "steer"):
        k = cfg.finetune.defense_settings.caft_k
        ft_inputs["defense"] = graph.add(
            "defense_inputs",
            f"{_HERE}:organism_defense_stage",
            {
                **org,
                "layer": cfg.sae_layer,
                "toxic_k": k if k is not None else cfg.filter.toxic_k,
                "tokens": cfg.filter.tokens,
            },
            inputs={"sae": sae, "corpora": corpora},
        )
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
        "finetune.defense": cfg.finetune.defense,
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


def organism_cell_problems(cfg: OrganismCell) -> list[str]:
    """What would make the cell fail once it runs: a scored filter's judge that is not registered, or a
    fine-tuning override that is not a valid ``FinetuneConfig`` key and value."""
    problems = judge_problems({"filter.judge": cfg.filter.judge if cfg.filter.scored else ""})
    if cfg.finetune.defense == "inoculate":  # the organism's vocabulary is fixed: no organism is trained here
        try:
            check_inoculation_prompt(build_tokenizer(), cfg.finetune.defense_settings.inoculation_prompt)
        except ConfigError as exc:
            problems.append(str(exc))
    if cfg.finetune.overrides:
        try:
            arm_config(
                finetune_config(cfg.finetune.method), cfg.finetune.overrides, name="finetune.overrides"
            )
        except (ConfigError, ValueError) as exc:
            problems.append(str(exc))
    return problems


ORGANISM = register_pipeline(
    CellPipeline(
        "organism", OrganismCell, _organism_build, _organism_row, _PLOTS, check=organism_cell_problems
    )
)
