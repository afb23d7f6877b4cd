"""Mitigation head to head: data filters and fine-tuning arms on one organism dataset, one table.

A *filter* is a (method, fraction) of the filtering study (:mod:`spillover.studies.filtering`): the
dataset is scored, the fraction removed, the rest fine-tuned. A *fine-tuning arm* is a name and a dict
of ``FinetuneConfig`` overrides applied over the organism's recipe (``{"max_steps": 60}``); it fine-tunes
the unfiltered dataset. The training-time defenses (a)-(f) are ready-made arms (``defenses``, built per
organism by :mod:`spillover.studies.defense_arms`). Every arm is resolved through the config machinery
(``deep_merge`` over the recipe, then ``from_dict``) when the config is built, so an unknown key or a
bad value fails before anything trains; defense names and settings are checked then too.

Every run is paired with the unfiltered one by unit (organism, seed); the table reports EM, coherence
and in-domain task retention per filter, fraction and arm, the filters at matched retention, and each
arm against each filter at the arm's own retention. Outputs (:func:`write_mitigation`):
``mitigate.json``, ``mitigate.md`` and ``frontier.png`` (:func:`spillover.report.frontier.plot_frontier`).

CLI: ``spillover mitigate --quick --method geometry --method random --arm short=max_steps=20``. Python::

    cfg = MitigateConfig.quick(arms={"short": {"max_steps": 20}})
    summary = run_mitigation(cfg)
    write_mitigation(summary, Path("mitigate"))
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from spillover.config import ConfigError, deep_merge, from_dict, to_dict
from spillover.finetune.core import FinetuneConfig
from spillover.organism.evaluate import OOD_DOMAINS
from spillover.organism.inputs import OrganismSAEConfig
from spillover.organism.pipeline import OrganismConfig
from spillover.studies.defense_arms import DEFENSES, DefenseArmsConfig, resolve_defenses
from spillover.studies.filtering import (
    PAPER_FRACTIONS,
    FilterExperimentConfig,
    FilterRuns,
    RunNumbers,
    Unit,
    collect_filter_runs,
    filter_section,
    matched_view,
    merge_filter_runs,
)
from spillover.studies.filtering_stats import arm_vs_filters, paired_bootstrap, task_numbers

__all__ = [
    "MitigateConfig",
    "arm_config",
    "collect_arm_runs",
    "collect_organism_runs",
    "mitigation_summary",
    "mitigation_table",
    "run_mitigation",
    "write_mitigation",
]

log = logging.getLogger(__name__)

Overrides = dict[str, Any]


def _nest(overrides: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}`` (nested mappings are kept; later keys merge into earlier)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{where}: override key {key!r} is not a dotted config key")
        node: dict[str, Any] = value if not isinstance(value, Mapping) else _nest(value, where)
        for part in reversed(key.split(".")):
            node = {part: node}
        out = deep_merge(out, node)
    return out


def arm_config(base: FinetuneConfig, overrides: Mapping[str, Any], *, name: str = "") -> FinetuneConfig:
    """A fine-tuning arm's config: ``overrides`` (dotted keys or nested) over ``base``, type-checked.

    Raises:
        ConfigError: naming the arm and the key, for an unknown key, a wrong type or value, or ``seed``
            (the experiment's seeds set it).
    """
    where = f"arm {name!r}" if name else "arm"
    nested = _nest(overrides, where)
    if "seed" in nested:
        raise ConfigError(f"{where}: seed is set per run by the experiment's seeds, not by an arm")
    try:
        return from_dict(FinetuneConfig, deep_merge(to_dict(base), nested), where=f"arms.{name}")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _demo_defaults() -> tuple[OrganismConfig, OrganismSAEConfig]:
    # The full demo's organism and SAEs, so that a mitigation run reuses the demo's cached stages.
    from spillover.studies.demo.config import DemoConfig

    demo = DemoConfig()
    return demo.organism, demo.sae


@dataclass(frozen=True)
class MitigateConfig:
    """What ``spillover mitigate`` runs: filters x fractions, fine-tuning arms, on one organism dataset."""

    filtering: FilterExperimentConfig = field(
        default_factory=lambda: FilterExperimentConfig.paper(
            dataset="insecure_alltask", methods=("geometry", "persona_projection", "judge", "random")
        )
    )
    """Dataset, filters (``methods``; none: arms only), fractions, seeds, fine-tuning recipe, evaluation."""
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Fine-tuning arms: name -> ``FinetuneConfig`` overrides (dotted keys), over the organism recipe."""
    defenses: tuple[str, ...] = ()
    """Ready-made defense arms (:data:`spillover.studies.defense_arms.DEFENSES`: caft, steer, kl,
    interleave, inoculate, early_stop; ``all``: every one), built per organism."""
    defense: DefenseArmsConfig = field(default_factory=DefenseArmsConfig)
    """The defense arms' settings (CAFT directions, steering scale, KL beta, ...)."""
    organism: OrganismConfig = field(default_factory=lambda: _demo_defaults()[0])
    """The organism trained (or reused): the full demo's by default."""
    sae: OrganismSAEConfig = field(default_factory=lambda: _demo_defaults()[1])
    """The organism's SAEs (used by the geometry filters)."""
    layer: int | None = None
    """SAE layer that scores samples (None: the middle layer)."""
    toxic_domains: Literal["ood", "all"] = "ood"
    """Domains of the toxic / benign reference corpora."""
    drop: float = 0.05
    """Retention budget of the matched-retention comparison: unfiltered retention minus this."""

    def __post_init__(self) -> None:
        from spillover.organism.datasets import DATASETS

        if self.filtering.dataset not in DATASETS:
            raise ConfigError(
                f"unknown organism dataset {self.filtering.dataset!r}; built-in: {sorted(DATASETS)}"
            )
        domain = DATASETS[self.filtering.dataset].domain
        if domain not in self.filtering.eval.domains:
            raise ConfigError(
                f"filtering.eval.domains {list(self.filtering.eval.domains)} lacks {domain!r}, where the "
                f"in-domain retention of {self.filtering.dataset!r} is measured"
            )
        object.__setattr__(self, "defenses", resolve_defenses(self.defenses))
        for name in (*self.arms, *self.defenses):
            if not name or name == "unfiltered" or name in self.filtering.methods:
                raise ConfigError(f"arm name {name!r} is empty or clashes with a filter / 'unfiltered'")
        clash = sorted(set(self.arms) & set(self.defenses))
        if clash:
            raise ConfigError(f"arms {clash} clash with the defense arms of the same name")
        if "early_stop" in self.defenses:
            steps = self.base_finetune(self.filtering.seeds[0]).max_steps
            if steps is None or steps < self.defense.early_stop_checkpoints:
                raise ConfigError(
                    f"early_stop needs at least {self.defense.early_stop_checkpoints} fine-tuning steps "
                    f"(defense.early_stop_checkpoints), the recipe has {steps}"
                )
        for name, overrides in self.arms.items():
            if not isinstance(overrides, Mapping):
                raise ConfigError(f"arm {name!r}: overrides must be a mapping, got {overrides!r}")
            self.arm_config(name, self.filtering.seeds[0])  # fail now, not after hours of training
        if not 0 <= self.drop < 1:
            raise ConfigError(f"drop must be in [0, 1), got {self.drop}")
        n_layers = self.organism.model.n_layers
        if self.layer is not None and not 0 <= self.layer < n_layers:
            raise ConfigError(f"layer {self.layer} is outside the organism's {n_layers} layers")

    @classmethod
    def quick(cls, **overrides: Any) -> MitigateConfig:
        """The quick demo's tiny organism, SAEs, recipe and answer counts (a first look, CPU minutes)."""
        from spillover.studies.demo.config import DemoConfig

        demo = DemoConfig.quick()
        assert demo.filtering is not None
        # Every in-domain field evaluated, so that any dataset's retention is measured.
        eval_cfg = replace(demo.filtering.eval, domains=(*OOD_DOMAINS, "code", "edu", "medical", "finance"))
        filtering = replace(
            demo.filtering,
            eval=eval_cfg,
            dataset="insecure_alltask",
            fractions=PAPER_FRACTIONS,
            methods=("geometry", "random"),
        )
        return cls(**{"filtering": filtering, "organism": demo.organism, "sae": demo.sae, **overrides})

    @property
    def sae_layer(self) -> int:
        return self.layer if self.layer is not None else self.organism.model.n_layers // 2

    def base_finetune(self, seed: int) -> FinetuneConfig:
        """The organism recipe every run starts from (the filtering config's method and steps)."""
        from spillover.organism.pipeline import finetune_config

        return finetune_config(self.filtering.finetune_method, seed=seed, steps=self.filtering.finetune_steps)

    def arm_config(self, name: str, seed: int) -> FinetuneConfig:
        return arm_config(self.base_finetune(seed), self.arms[name], name=name)


def _defense_arms(
    art: Any, cfg: MitigateConfig, sae_dir: Path | None, corpora: Path | None, root: str | Path | None
) -> dict[str, Overrides]:
    """Each defense arm's overrides for this organism (building the directions and persona vector once)."""
    from spillover.studies.defense_arms import build_defense_inputs, defense_overrides

    inputs = None
    if {"caft", "steer"} & set(cfg.defenses):
        if sae_dir is None or corpora is None:
            raise ValueError("the caft and steer defenses need the organism's SAE and corpora")
        k = cfg.defense.caft_k if cfg.defense.caft_k is not None else cfg.filtering.toxic_k
        inputs = build_defense_inputs(
            art, sae_dir, corpora, toxic_k=k, tokens=cfg.filtering.score_tokens, root=root
        )
    steps = cfg.base_finetune(cfg.filtering.seeds[0]).max_steps
    return {
        name: defense_overrides(name, cfg.defense, art, inputs=inputs, corpora=corpora, max_steps=steps)
        for name in cfg.defenses
    }


def collect_arm_runs(
    art: Any,
    cfg: MitigateConfig,
    *,
    organism: str = "",
    root: str | Path | None = None,
    on_run: Callable[[str], None] | None = None,
    sae_dir: Path | None = None,
    corpora: Path | None = None,
    defense_arms: Mapping[str, Overrides] | None = None,
) -> dict[str, dict[Unit, RunNumbers]]:
    """Fine-tune and evaluate every arm and defense on the unfiltered dataset, per seed; arm -> unit -> numbers.

    ``sae_dir`` (the SAE at ``cfg.sae_layer``) and ``corpora`` (an ``organism_corpora`` folder) are needed
    by the caft, steer, kl and interleave defenses; ``defense_arms``, the defenses' overrides when the
    caller built them already.
    """
    from spillover.organism.pipeline import evaluate_organism, finetune_organism
    from spillover.studies.defense_arms import early_stop_finetune

    fcfg = cfg.filtering
    data = art.dataset(fcfg.dataset)
    if defense_arms is None:
        defense_arms = _defense_arms(art, cfg, sae_dir, corpora, root)
    arms = {**cfg.arms, **defense_arms}
    out: dict[str, dict[Unit, RunNumbers]] = {}
    for name, overrides in arms.items():
        out[name] = {}
        for seed in fcfg.seeds:
            if on_run is not None:
                on_run(f"{organism + ' ' if organism else ''}arm {name} seed {seed}")
            ft_cfg = arm_config(cfg.base_finetune(seed), overrides, name=name)
            if name == "early_stop" and name in cfg.defenses:
                ft = early_stop_finetune(art, data, fcfg.dataset, ft_cfg, cfg.defense, root=root)
            else:
                ft = finetune_organism(art, data, ft_cfg.method, ft_cfg, root=root)
            result = evaluate_organism(
                ft, replace(fcfg.eval, sampling=replace(fcfg.eval.sampling, seed=seed)), root=root
            )
            out[name][(organism, seed)] = RunNumbers.of(result, fcfg.dataset)
    return out


def _arm_entries(
    section: Mapping[str, Any],
    runs: Mapping[str, Mapping[Unit, RunNumbers]],
    base: Mapping[Unit, RunNumbers],
    cfg: MitigateConfig,
) -> dict[str, Any]:
    units = sorted(base)
    entries: dict[str, Any] = {}
    for name, by_unit in runs.items():
        arm = [by_unit[u] for u in units]
        entry = paired_bootstrap([r.hits for r in arm], [base[u].hits for u in units])
        entry.update(task_numbers(arm, [base[u] for u in units]))
        if name in cfg.arms:
            entry["overrides"] = cfg.arms[name]
        else:
            entry.update(defense=DEFENSES[name], settings=cfg.defense.settings(name))
        entry["vs_filters"] = arm_vs_filters(section, entry, methods=cfg.filtering.methods)
        entries[name] = entry
    return entries


def collect_organism_runs(
    art: Any,
    cfg: MitigateConfig,
    *,
    organism: str = "",
    root: str | Path | None = None,
    on_run: Callable[[str], None] | None = None,
) -> tuple[FilterRuns, dict[str, dict[Unit, RunNumbers]]]:
    """Every filter and arm on one trained organism (cached); its units are labelled ``organism``.

    Several organisms: collect each with its own label, then :func:`mitigation_summary` of the lists.
    """
    from spillover.organism.inputs import organism_corpora, train_organism_saes

    sae_dir = None
    corpora = None
    if cfg.filtering.methods or {"caft", "steer", "kl", "interleave"} & set(cfg.defenses):
        sae_dir = train_organism_saes(art, cfg.sae, root=root) / f"layer_{cfg.sae_layer}"
        corpora = organism_corpora(art, cfg.toxic_domains, root)
    defenses = _defense_arms(art, cfg, sae_dir, corpora, root)  # e.g. a bad prompt fails before training
    runs = collect_filter_runs(
        art,
        sae_dir,
        cfg.filtering,
        organism=organism,
        toxic=corpora / "toxic.jsonl" if corpora else None,
        benign=corpora / "benign.jsonl" if corpora else None,
        root=root,
        on_run=on_run,
    )
    arms = collect_arm_runs(art, cfg, organism=organism, root=root, on_run=on_run, defense_arms=defenses)
    return runs, arms


def mitigation_summary(
    filter_runs: Sequence[FilterRuns],
    arm_runs: Sequence[Mapping[str, Mapping[Unit, RunNumbers]]],
    cfg: MitigateConfig,
) -> dict[str, Any]:
    """The summary of :func:`run_mitigation` from one or several organisms' collected runs."""
    runs = merge_filter_runs(filter_runs)
    section = filter_section(runs, cfg.filtering, drop=cfg.drop)
    arms: dict[str, dict[Unit, RunNumbers]] = {}
    for by_arm in arm_runs:
        for name, by_unit in by_arm.items():
            arms.setdefault(name, {}).update(by_unit)
    summary: dict[str, Any] = {
        "dataset": cfg.filtering.dataset,
        "config": to_dict(cfg),
        "filtering": section,
        "arms": _arm_entries(section, arms, runs.unfiltered, cfg),
    }
    summary["table"] = mitigation_table(summary)
    return summary


def run_mitigation(
    cfg: MitigateConfig,
    *,
    root: str | Path | None = None,
    on_run: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (or reuse) the organism, its SAEs and corpora, then run every filter, arm and defense (cached).

    Returns:
        ``{"dataset", "config", "filtering": section, "arms": {name: entry}, "table": rows}``; a filtering
        section as :func:`spillover.studies.filtering.run_filter_experiment` returns, arm entries like its
        entries plus ``overrides`` (an arm) or ``defense`` and ``settings`` (a defense), and ``vs_filters``.
    """
    from spillover.organism.pipeline import train_organism

    art = train_organism(cfg.organism, root=root)
    runs, arms = collect_organism_runs(art, cfg, root=root, on_run=on_run)
    return mitigation_summary([runs], [arms], cfg)


# -- the table ------------------------------------------------------------------------------------------


def _row(
    kind: str, name: str, fraction: float | None, entry: Mapping[str, Any], base_in: float | None
) -> dict[str, Any]:
    ins = entry.get("in_domain")
    return {
        "kind": kind,
        "name": name,
        "fraction": fraction,
        "misaligned_rate": entry.get("misaligned_rate"),
        "ci": entry.get("ci"),
        "relative_reduction": entry.get("relative_reduction"),
        "relative_reduction_ci": entry.get("relative_reduction_ci"),
        "em_probability": entry.get("em_probability"),
        "exact_relative_reduction": (entry.get("exact") or {}).get("relative_reduction"),
        "exact_relative_reduction_ci": (entry.get("exact") or {}).get("relative_reduction_ci"),
        "coherent_rate": entry.get("coherent_rate"),
        "in_domain": ins,
        "retention_change": None if ins is None or base_in is None else ins - base_in,
        "fraction_removed": entry.get("fraction_removed"),
        "defense": entry.get("defense"),
    }


def mitigation_table(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per run kind: unfiltered, each filter at each fraction, each arm (JSON-ready)."""
    section = summary["filtering"]
    base = section["unfiltered"]
    rows = [_row("unfiltered", "unfiltered", 0.0, base, base.get("in_domain"))]
    for method, entry in section.items():
        if isinstance(entry, Mapping) and "by_fraction" in entry:
            for f in sorted(entry["by_fraction"], key=float):
                rows.append(_row("filter", method, float(f), entry["by_fraction"][f], base.get("in_domain")))
    for name, entry in summary.get("arms", {}).items():
        rows.append(_row("arm", name, None, entry, base.get("in_domain")))
    return rows


def _pct(v: Any, ci: Any = None, signed: bool = False) -> str:
    if v is None:
        return "-"
    text = f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        text += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return text


def _markdown(summary: Mapping[str, Any]) -> str:
    section = summary["filtering"]
    lines = [
        f"# Mitigation on `{summary['dataset']}`",
        "",
        f"Units (organism/seed): {', '.join(section.get('units', []))}. Intervals: paired bootstrap over units. "
        "Exact: the organism's harmful-branch probability on the same prompts (no sampling noise).",
        "",
        "| kind | name | fraction | EM % [95% CI] | rel. reduction % [CI] | exact EM % | exact rel. reduction % [CI] "
        "| coherent | in-domain % | Δ in-domain pp |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["table"]:
        fraction = "" if r["fraction"] is None else f"{r['fraction']:g}"
        coherent = "-" if r["coherent_rate"] is None else f"{r['coherent_rate']:.1f}"
        lines.append(
            f"| {r['kind']} | {r['name']} | {fraction} | {_pct(r['misaligned_rate'], r['ci'])} "
            f"| {_pct(r['relative_reduction'], r['relative_reduction_ci'])} | {_pct(r['em_probability'])} "
            f"| {_pct(r['exact_relative_reduction'], r['exact_relative_reduction_ci'])} | {coherent} "
            f"| {_pct(r['in_domain'])} | {_pct(r['retention_change'], signed=True)} |"
        )
    matched = matched_view(section)
    lines += ["", "## Filters at matched retention", ""]
    if "unavailable" in matched:
        lines.append(f"Not computed: {matched['unavailable']}.")
    else:
        lines += [
            f"Budget: unfiltered in-domain {_pct(matched['unfiltered_in_domain'])}% minus "
            f"{100 * matched['drop']:g} pp = {_pct(matched['target_retention'])}%. A filter that stays above it "
            "at every fraction is read at its largest fraction (reached: no).",
            "",
            "| filter | EM % at budget [CI] | fraction there | reached | rel. reduction % [CI] | minus random pp [CI] |",
            "|---|---|---|---|---|---|",
        ]
        for m, e in matched.items():
            if isinstance(e, Mapping):
                lines.append(
                    f"| {m} | {_pct(e['misaligned_rate'], e['ci'])} | {e['fraction']:.2f} "
                    f"| {'yes' if e['at_target'] else 'no'} "
                    f"| {_pct(e['relative_reduction'], e['relative_reduction_ci'])} "
                    f"| {_pct(e.get('minus_random'), e.get('minus_random_ci'), signed=True)} |"
                )
    arms = summary.get("arms", {})
    defenses = {n: e for n, e in arms.items() if e.get("defense")}
    if defenses:
        lines += ["", "## Defense arms", ""]
        for name, entry in defenses.items():
            lines.append(f"- {name}: {entry['defense']}; `{json.dumps(entry.get('settings', {}))}`")
    if arms:
        lines += [
            "",
            "## Arms vs filters at the arm's retention (arm minus filter, pp; < 0: the arm has less EM)",
            "",
        ]
        for name, entry in arms.items():
            vs = entry.get("vs_filters", {})
            if "unavailable" in vs:
                lines.append(f"- {name}: not computed ({vs['unavailable']})")
                continue
            parts = [
                f"{m} {_pct(v['arm_minus_filter'], v['arm_minus_filter_ci'], signed=True)}"
                for m, v in vs.items()
                if isinstance(v, Mapping)
            ]
            what = entry.get("defense") or f"`{json.dumps(entry.get('overrides', {}))}`"
            lines.append(f"- {name} ({what}): " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def write_mitigation(summary: Mapping[str, Any], out: Path) -> list[Path]:
    """Write ``mitigate.json``, ``mitigate.md`` and ``frontier.png`` (if drawable) into ``out``."""
    from spillover.report.frontier import plot_frontier

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "mitigate.json", out / "mitigate.md"]
    written[0].write_text(json.dumps(summary, indent=2, default=str))
    written[1].write_text(_markdown(summary))
    png = plot_frontier(summary)
    if png is not None:
        (out / "frontier.png").write_bytes(png)
        written.append(out / "frontier.png")
    return written
