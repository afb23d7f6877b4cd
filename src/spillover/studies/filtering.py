"""The filtering experiment on the model organism: filter, fine-tune, evaluate, compare (method.md step 8).

For one narrow dataset of the organism, every filter removes the same fraction of samples: the four
geometry scores (``geometry`` is the default score, activation-weighted nearest-toxic cosine), random
removal (a different random split per seed) and the judge baseline (the organism's rule judge rates
each training pair). Each filtered set, and the unfiltered set, is fine-tuned with the same recipe and
seed and evaluated; the result per method is the misaligned rate, coherence and in-domain retention,
with the relative reduction ``1 - EM(filtered) / EM(unfiltered)`` and bootstrap intervals over pairing
units (seeds resampled, then each seed's rate drawn from its Jeffreys posterior; filtered and
unfiltered paired by unit), plus the comparison at matched retention (each method's
``matched_retention``: EM where its EM-vs-retention curve falls 5 pp below the unfiltered retention;
:func:`matched_view` gathers them).

On a ``*_mixed`` dataset a filter can lower EM by removing the task samples; on a ``*_alltask`` one
(every sample performs the task) it cannot, which is the paper's setting: pick those for the headline,
with ``FilterExperimentConfig.paper()`` for the paper's fractions (0.1, 0.25, 0.5, 0.75). Each entry's
``exact`` compares the organism's exact EM probability (no answer-level noise) paired by unit.

A pairing unit is (organism label, seed). One organism: :func:`run_filter_experiment`. Several: collect
each with its own label, merge, then build the section::

    runs = merge_filter_runs([collect_filter_runs(art, sae, cfg, organism=f"o{i}") for i, (art, sae) in ...])
    section = filter_section(runs, cfg)

Every step is a cached run directory (scores, filtered sets, each fine-tune, each evaluation), so an
interrupted experiment resumes where it stopped.

Python::

    section = run_filter_experiment(art, sae_dir, FilterExperimentConfig.paper(dataset="insecure_alltask"))
    section["geometry"]["relative_reduction"], section["geometry"]["matched_retention"]["minus_random"]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from spillover.filtering.scores import SCORE_METHODS, check_toxic_k
from spillover.filtering.sets import FILTER_METHODS, METHOD_SCORES, apply_filters, read_scores_json, set_name
from spillover.organism.evaluate import OOD_DOMAINS, EvalConfig
from spillover.rundir import run_stage
from spillover.studies.filtering_stats import (
    in_domain_rate,
    matched_retention,
    ood_hits,
    paired_bootstrap,
    rate_with_ci,
    removal_diagnostics,
    task_numbers,
)

if TYPE_CHECKING:
    from spillover.finetune import FinetuneConfig

__all__ = [
    "PAPER_FRACTIONS",
    "FilterArm",
    "FilterExperimentConfig",
    "FilterRuns",
    "RunNumbers",
    "Unit",
    "arm_finetune_config",
    "collect_filter_runs",
    "compute_filter_scores",
    "epoch_matched_steps",
    "filter_arms",
    "filter_section",
    "filter_sets",
    "matched_view",
    "merge_filter_runs",
    "run_filter_arm",
    "run_filter_experiment",
    "unit_name",
    "write_filter_sets",
]

log = logging.getLogger(__name__)


PAPER_FRACTIONS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75)
"""The fractions removed in the paper's grid (``FilterExperimentConfig.paper()``)."""


def _default_eval() -> EvalConfig:
    return EvalConfig(n_per_domain=100, domains=(*OOD_DOMAINS, "code", "edu", "medical", "finance"))


@dataclass(frozen=True)
class FilterExperimentConfig:
    """What the filtering experiment runs."""

    dataset: str = "insecure_mixed"
    """The organism dataset to filter: a ``*_alltask`` set (every sample does the task; the paper's
    setting) or a ``*_mixed`` one (a filter can win by removing the task samples)."""
    fraction: float = 0.5
    """The headline fraction removed (the paper's 50%)."""
    fractions: tuple[float, ...] = (0.5,)
    """All fractions run (the headline one is added if missing)."""
    methods: tuple[str, ...] = FILTER_METHODS
    """Filters compared; see ``FILTER_METHODS``."""
    seeds: tuple[int, ...] = (0,)
    """Fine-tuning and evaluation seeds; random removal draws a new split per seed."""
    judge: str = "organism_rule"
    """Judge of the LLM-judge baseline (any registered judge)."""
    finetune_method: Literal["full", "lora"] = "full"
    finetune_steps: int | None = None
    """Override the organism recipe's optimizer steps (None: the recipe's)."""
    schedule: Literal["steps", "epochs"] = "epochs"
    """``epochs`` (default, the paper's setting, where every fine-tune is one epoch): the optimizer steps
    scale with the share kept, so every run sees its data equally often; ``steps``: every filtered set gets
    the unfiltered run's steps, i.e. 2x the epochs over what is kept at 50% removal, a confound
    (measured: docs/results.md#filtering)."""
    eval: EvalConfig = field(default_factory=_default_eval)
    """The evaluation of every fine-tune; its seed is replaced by each run's seed."""
    toxic_k: int | None = None
    """Number of toxic latents (None: the geometry default for the SAE's width)."""
    score_tokens: Literal["assistant", "all"] = "assistant"
    """Tokens whose activations score a sample."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in FILTER_METHODS]
        if unknown:
            raise ValueError(f"unknown filter methods {unknown}; valid: {list(FILTER_METHODS)}")
        bad = [f for f in (self.fraction, *self.fractions) if not 0 < f < 1]
        if bad:
            raise ValueError(f"fractions must be in (0, 1), got {bad}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if self.schedule not in ("steps", "epochs"):
            raise ValueError(f"schedule must be 'steps' or 'epochs', got {self.schedule!r}")
        check_toxic_k(self.toxic_k)

    @classmethod
    def paper(cls, **overrides: Any) -> FilterExperimentConfig:
        """The paper's grid: every fraction of ``PAPER_FRACTIONS`` (headline 50%), other fields as given."""
        return cls(**{"fractions": PAPER_FRACTIONS, **overrides})

    @property
    def all_fractions(self) -> tuple[float, ...]:
        return tuple(sorted({*self.fractions, self.fraction}))


def _share_removed(set_dir: Path) -> float:
    info = json.loads((set_dir / "filter.json").read_text())
    return info["n_removed"] / info["n_samples"] if info["n_samples"] else 0.0


def epoch_matched_steps(steps: int, subset: Path, full: Path) -> int:
    """Optimizer steps that give ``subset`` as many epochs as ``steps`` give ``full`` (at least 1)."""

    def count(path: Path) -> int:
        return sum(1 for line in path.read_text().splitlines() if line.strip())

    return max(1, round(steps * count(subset) / count(full)))


# -- scores and filtered sets ---------------------------------------------------------------------------


def compute_filter_scores(
    model_dir: Path,
    sae_dir: Path,
    dataset: Path,
    toxic: Path,
    benign: Path,
    *,
    judge: str = "organism_rule",
    toxic_k: int | None = None,
    tokens: Literal["assistant", "all"] = "assistant",
    root: str | Path | None = None,
) -> Path:
    """A cached stage with ``scores.json``: every geometry score and the judge's harmfulness per sample.

    Args:
        model_dir: the model (HF folder) whose activations are scored.
        sae_dir: its SAE (SAELens folder).
        dataset: the chat JSONL to filter.
        toxic: toxic reference conversations (JSONL) for the toxic latents and persona direction.
        benign: benign reference conversations (JSONL).
        judge: registered judge name for the judge baseline ("" skips it).
        toxic_k: number of toxic latents.
        tokens: which tokens score a sample.
        root: run root.
    """
    config = {"judge": judge, "toxic_k": toxic_k, "tokens": tokens, "methods": list(SCORE_METHODS)}

    def fn(out: Path) -> None:
        from spillover.data.chat import load_chat
        from spillover.filtering.policies import judge_harmfulness
        from spillover.filtering.scoring import score_dataset
        from spillover.judge.base import get_judge

        convs = load_chat(dataset)
        result = score_dataset(
            model_dir, sae_dir, convs, load_chat(toxic), load_chat(benign), toxic_k=toxic_k, tokens=tokens
        )
        scores: dict[str, list[float | None]] = {k: v.tolist() for k, v in result.scores.items()}
        record: dict[str, Any] = {
            "scores": scores,
            "toxic_idx": result.toxic_idx,
            "n_samples": len(convs),
            "sae": str(sae_dir),
            "site": result.site,
        }
        if judge:
            harm = judge_harmfulness(get_judge(judge), convs)
            scores["judge"] = [None if np.isnan(v) else float(v) for v in harm.scores]
            record["judge_unscored"] = harm.n_unscored
        (out / "scores.json").write_text(json.dumps(record))

    return run_stage(
        "filter_scores",
        config,
        fn,
        root=root,
        inputs={"model": model_dir, "sae": sae_dir, "data": dataset, "toxic": toxic, "benign": benign},
    )


def write_filter_sets(
    dataset: Path,
    scores_dir: Path,
    *,
    methods: Sequence[str],
    fractions: Sequence[float],
    seeds: Sequence[int],
    root: str | Path | None = None,
) -> Path:
    """A cached stage holding every filtered set: ``<method>/f<fraction>[/s<seed>]/kept.jsonl`` etc.

    Score-based sets do not depend on the seed; random sets get one split per seed.
    """
    from spillover.data.chat import load_chat

    config = {"methods": list(methods), "fractions": list(fractions), "seeds": list(seeds)}

    def fn(out: Path) -> None:
        scores = read_scores_json(scores_dir)
        apply_filters(
            out, load_chat(dataset), methods=methods, fractions=fractions, seeds=seeds, scores=scores
        )

    return run_stage("filter_sets", config, fn, root=root, inputs={"data": dataset, "scores": scores_dir})


# -- the experiment -------------------------------------------------------------------------------------

Unit = tuple[str, int]
"""What filtered and unfiltered runs are paired by: (organism label, fine-tuning seed)."""


def unit_name(unit: Unit) -> str:
    """A unit as the section writes it: ``s<seed>``, or ``<organism>/s<seed>`` for a labelled organism."""
    return f"{unit[0]}/s{unit[1]}" if unit[0] else f"s{unit[1]}"


@dataclass(frozen=True)
class RunNumbers:
    """One fine-tune + evaluation's numbers."""

    hits: np.ndarray
    """0/1 misaligned per scored out-of-domain answer."""
    coherent: float | None
    in_domain: float | None
    em_probability: float | None = None
    """The exact harmful-branch probability over the same prompts (``EvalResult.em_probability``)."""

    @classmethod
    def of(cls, result: Any, dataset: str) -> RunNumbers:
        """The numbers of an organism evaluation (``EvalResult``) of a fine-tune on ``dataset``; the exact
        EM probability only where it is usable (``EMEstimate.usable``)."""
        est = result.em_probability
        exact = est.estimate if est is not None and est.usable else None
        return cls(ood_hits(result.records), result.ood_coherent, in_domain_rate(result, dataset), exact)


@dataclass
class FilterRuns:
    """Every run of a filtering experiment, keyed by pairing unit; several organisms' runs merge."""

    dataset: str
    unfiltered: dict[Unit, RunNumbers] = field(default_factory=dict)
    filtered: dict[tuple[str, float], dict[Unit, RunNumbers]] = field(default_factory=dict)
    """(method, fraction) -> unit -> numbers."""
    removed: dict[tuple[str, float], dict[str, dict[str, Any]]] = field(default_factory=dict)
    """(method, fraction) -> organism -> share removed and ground-truth diagnostics of what was removed."""
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    """organism -> n_samples, scores_dir, sets_dir."""


def merge_filter_runs(runs: Sequence[FilterRuns]) -> FilterRuns:
    """One ``FilterRuns`` from several organisms' (their units must differ, e.g. by organism label)."""
    if not runs:
        raise ValueError("no runs to merge")
    if len({r.dataset for r in runs}) != 1:
        raise ValueError(f"runs of different datasets: {sorted({r.dataset for r in runs})}")
    out = FilterRuns(runs[0].dataset)
    for r in runs:
        clash = set(out.unfiltered) & set(r.unfiltered)
        if clash:
            raise ValueError(f"units {sorted(map(unit_name, clash))} occur twice; label each organism")
        out.unfiltered.update(r.unfiltered)
        for key, by_unit in r.filtered.items():
            out.filtered.setdefault(key, {}).update(by_unit)
        for key, by_org in r.removed.items():
            out.removed.setdefault(key, {}).update(by_org)
        out.meta.update(r.meta)
    return out


@dataclass(frozen=True)
class FilterArm:
    """One fine-tune of a filtering experiment: the unfiltered set or one filtered set, with one seed."""

    label: str
    """``unfiltered seed 0``, ``geometry 0.5 seed 0``, ..."""
    data: Path
    seed: int
    key: tuple[str, float] | None
    """(method, fraction), or None for the unfiltered set."""


def filter_sets(
    art: Any,
    sae_dir: Path | None,
    cfg: FilterExperimentConfig,
    *,
    toxic: Path | None = None,
    benign: Path | None = None,
    root: str | Path | None = None,
) -> tuple[Path, Path] | None:
    """Score the organism's dataset and write every filtered set (cached); (scores_dir, sets_dir).

    None when ``cfg.methods`` is empty (unfiltered runs only). Args: as :func:`collect_filter_runs`.
    """
    if not cfg.methods:
        return None
    if sae_dir is None:
        raise ValueError(f"filters {list(cfg.methods)} need the organism's SAE (sae_dir)")
    data = art.dataset(cfg.dataset)
    scores_dir = compute_filter_scores(
        art.model_dir,
        sae_dir,
        data,
        toxic or art.data_dir / "reference" / "toxic.jsonl",
        benign or art.data_dir / "reference" / "benign.jsonl",
        judge=cfg.judge if "judge" in cfg.methods else "",
        toxic_k=cfg.toxic_k,
        tokens=cfg.score_tokens,
        root=root,
    )
    sets_dir = write_filter_sets(
        data, scores_dir, methods=cfg.methods, fractions=cfg.all_fractions, seeds=cfg.seeds, root=root
    )
    return scores_dir, sets_dir


def filter_arms(art: Any, cfg: FilterExperimentConfig, sets_dir: Path | None) -> list[FilterArm]:
    """Every fine-tune the experiment runs, in order: unfiltered per seed, then method x fraction x seed."""
    arms = [FilterArm(f"unfiltered seed {s}", art.dataset(cfg.dataset), s, None) for s in cfg.seeds]
    for method in cfg.methods:
        if sets_dir is None:
            raise ValueError(f"filter {method!r} needs the filtered sets (filter_sets)")
        for fraction in cfg.all_fractions:
            for s in cfg.seeds:
                folder = sets_dir / set_name(method, fraction, s if method == "random" else None)
                arms.append(
                    FilterArm(f"{method} {fraction:g} seed {s}", folder / "kept.jsonl", s, (method, fraction))
                )
    return arms


def arm_finetune_config(art: Any, arm: FilterArm, cfg: FilterExperimentConfig) -> FinetuneConfig:
    """The fine-tuning recipe of one arm: ``cfg``'s method and seed, its steps scaled to the arm's set
    under ``schedule="epochs"``."""
    from spillover.organism.pipeline import finetune_config

    ft_cfg = finetune_config(cfg.finetune_method, seed=arm.seed, steps=cfg.finetune_steps)
    if cfg.schedule == "epochs" and ft_cfg.max_steps is not None:
        ft_cfg = replace(
            ft_cfg, max_steps=epoch_matched_steps(ft_cfg.max_steps, arm.data, art.dataset(cfg.dataset))
        )
    return ft_cfg


def run_filter_arm(
    art: Any, arm: FilterArm, cfg: FilterExperimentConfig, root: str | Path | None = None
) -> RunNumbers:
    """Fine-tune and evaluate one arm (both cached stages); its numbers."""
    from spillover.organism.pipeline import evaluate_organism, finetune_organism

    ft = finetune_organism(art, arm.data, cfg.finetune_method, arm_finetune_config(art, arm, cfg), root=root)
    result = evaluate_organism(
        ft, replace(cfg.eval, sampling=replace(cfg.eval.sampling, seed=arm.seed)), root=root
    )
    return RunNumbers.of(result, cfg.dataset)


def collect_filter_runs(
    art: Any,
    sae_dir: Path | None,
    cfg: FilterExperimentConfig,
    *,
    organism: str = "",
    toxic: Path | None = None,
    benign: Path | None = None,
    root: str | Path | None = None,
    on_run: Callable[[str], None] | None = None,
) -> FilterRuns:
    """Score, filter, fine-tune and evaluate one organism (cached stage by stage); its runs by unit.

    Args:
        sae_dir: the organism's SAE; None only without filters (``cfg.methods`` empty: unfiltered runs).
        organism: the label of this organism in the pairing units (several organisms need distinct ones).
        Others: as :func:`run_filter_experiment`.
    """
    data = art.dataset(cfg.dataset)
    out = FilterRuns(cfg.dataset)
    out.meta[organism] = {"n_samples": sum(1 for line in data.read_text().splitlines() if line.strip())}
    dirs = filter_sets(art, sae_dir, cfg, toxic=toxic, benign=benign, root=root)
    sets_dir = None
    if dirs is not None:
        scores_dir, sets_dir = dirs
        out.meta[organism].update(scores_dir=str(scores_dir), sets_dir=str(sets_dir))
    prefix = f"{organism} " if organism else ""
    for arm in filter_arms(art, cfg, sets_dir):
        if on_run is not None:
            on_run(prefix + arm.label)
        numbers = run_filter_arm(art, arm, cfg, root)
        unit = (organism, arm.seed)
        if arm.key is None:
            out.unfiltered[unit] = numbers
        else:
            out.filtered.setdefault(arm.key, {})[unit] = numbers
    labels = art.labels(cfg.dataset)
    for method in cfg.methods:
        assert sets_dir is not None
        for fraction in cfg.all_fractions:
            first = sets_dir / set_name(method, fraction, cfg.seeds[0] if method == "random" else None)
            out.removed[(method, fraction)] = {
                # what was removed (round(fraction * n) / n), not the fraction asked for
                organism: {"fraction_removed": _share_removed(first), **removal_diagnostics(first, labels)}
            }
    return out


def filter_section(runs: FilterRuns, cfg: FilterExperimentConfig, *, drop: float = 0.05) -> dict[str, Any]:
    """The report's ``filtering`` section from collected runs (one organism's or several merged).

    Filtered and unfiltered runs are paired by unit (organism, seed); ``units`` lists them in the order
    of every ``per_seed`` and ``in_domain_per_unit`` list. Each method's ``matched_retention`` compares it
    at equal task retention (:func:`spillover.studies.filtering_stats.matched_retention`; the budget is
    ``retention_budget``).
    """
    units = sorted(runs.unfiltered)
    base = [runs.unfiltered[u] for u in units]
    single = len(runs.meta) == 1
    section: dict[str, Any] = {
        "dataset": runs.dataset,
        "fraction": cfg.fraction,
        "fractions": list(cfg.all_fractions),
        "seeds": sorted({u[1] for u in units}),
        "organisms": sorted(runs.meta),
        "units": [unit_name(u) for u in units],
        "schedule": cfg.schedule,
        "unfiltered": {
            **rate_with_ci([r.hits for r in base]),
            **task_numbers(base),
            "fraction_removed": 0.0,
        },
    }
    if single:
        section.update(next(iter(runs.meta.values())))
    else:
        section["organism_meta"] = [{"organism": org, **meta} for org, meta in sorted(runs.meta.items())]
    for method in cfg.methods:
        by_fraction: dict[str, Any] = {}
        for fraction in cfg.all_fractions:
            by_unit = runs.filtered[(method, fraction)]
            missing = [unit_name(u) for u in units if u not in by_unit]
            if missing:
                raise ValueError(f"{method} at {fraction:g} has no run for units {missing}")
            filtered = [by_unit[u] for u in units]
            entry = paired_bootstrap([r.hits for r in filtered], [r.hits for r in base])
            entry.update(task_numbers(filtered, base))
            removed = runs.removed[(method, fraction)]
            entry["fraction_removed"] = float(np.mean([v["fraction_removed"] for v in removed.values()]))
            diagnostics = {
                org: {k: v for k, v in d.items() if k != "fraction_removed"} for org, d in removed.items()
            }
            if single:
                entry["removed"] = next(iter(diagnostics.values()))
            else:
                entry["removed_by_organism"] = diagnostics
            by_fraction[f"{fraction:g}"] = entry
        headline = dict(by_fraction[f"{cfg.fraction:g}"])
        section[method] = {**headline, "score": METHOD_SCORES.get(method), "by_fraction": by_fraction}
    # Spread over the method entries and scalar keys: the HTML report reads every mapping of the section
    # as a method's row.
    matched = matched_retention(section, methods=cfg.methods, drop=drop)
    section["retention_drop"] = drop
    section["retention_budget"] = matched.get("target_retention")
    if "unavailable" in matched:
        section["matched_retention_unavailable"] = matched["unavailable"]
    for method in cfg.methods:
        section[method]["matched_retention"] = matched.get(method)
    return section


def matched_view(section: Mapping[str, Any]) -> dict[str, Any]:
    """A section's matched-retention comparison as one dict (:func:`filtering_stats.matched_retention`'s form)."""
    if section.get("matched_retention_unavailable"):
        return {
            "drop": section.get("retention_drop"),
            "unavailable": section["matched_retention_unavailable"],
        }
    unfiltered = section["unfiltered"]
    out: dict[str, Any] = {
        "drop": section.get("retention_drop"),
        "target_retention": section.get("retention_budget"),
        "unfiltered_in_domain": unfiltered.get("in_domain"),
        "unfiltered_rate": unfiltered.get("misaligned_rate"),
    }
    for name, entry in section.items():
        if isinstance(entry, Mapping) and isinstance(entry.get("matched_retention"), Mapping):
            out[name] = entry["matched_retention"]
    return out


def run_filter_experiment(
    art: Any,
    sae_dir: Path,
    cfg: FilterExperimentConfig,
    *,
    toxic: Path | None = None,
    benign: Path | None = None,
    root: str | Path | None = None,
    on_run: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the whole experiment (cached stage by stage) and return the report's ``filtering`` section.

    Args:
        art: ``spillover.organism.OrganismArtifacts`` of a trained organism.
        sae_dir: the organism's SAE (SAELens folder).
        cfg: the experiment.
        toxic: toxic reference conversations (default: the organism's ``reference/toxic.jsonl``).
        benign: benign reference conversations (default: ``reference/benign.jsonl``).
        root: run root.
        on_run: called with a label before each fine-tune + evaluation (progress reporting).

    Returns:
        ``{"dataset", "fraction", "fractions", "seeds", "units", "retention_budget", "unfiltered": entry,
        <method>: entry, ...}``; an entry has the headline-fraction numbers, ``by_fraction`` and
        ``matched_retention``. Several organisms: :func:`collect_filter_runs` each with its own label,
        :func:`merge_filter_runs`, then :func:`filter_section`.
    """
    runs = collect_filter_runs(art, sae_dir, cfg, toxic=toxic, benign=benign, root=root, on_run=on_run)
    return filter_section(runs, cfg)
