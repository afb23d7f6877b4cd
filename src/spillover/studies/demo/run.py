"""``run_demo``: every step of the demo in order, each a cached stage, then ``summary.json`` and the report."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from spillover.config import config_hash, to_dict
from spillover.organism.pipeline import OrganismArtifacts
from spillover.rundir import default_root, git_revision
from spillover.studies.demo.config import DemoConfig
from spillover.studies.demo.parallel import prefetch, risk_layer
from spillover.studies.demo.pooled import geometry_vs_others
from spillover.studies.demo.stages import (
    dynamics_stage,
    em_runs,
    exact_em,
    geometry_stage,
    mean_or_none,
    seeded_eval,
    spillover_stage,
)
from spillover.studies.demo.summary import (
    clean_nans,
    geometry_section,
    organism_unit_label,
    per_organism,
    pooled_geometry,
    summary_notes,
)
from spillover.studies.demo.verdicts import verdicts

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        log.info("demo: %s", name)
        try:
            yield
        finally:
            key = f"{name}_s"  # a step run once per organism adds up
            self.timings[key] = round(self.timings.get(key, 0.0) + time.perf_counter() - start, 2)


class _Inputs(NamedTuple):
    art: OrganismArtifacts
    sae_root: Path
    """One SAE per layer, ``layer_<n>/``."""
    corpora: Path
    """The organism_corpora stage: toxic, benign and reference conversations."""


@dataclass
class _Run:
    """What one ``run_demo`` call carries from step to step."""

    cfg: DemoConfig
    root: Path
    say: Callable[[str], None]
    timer: _Timer = field(default_factory=_Timer)
    stages: dict[str, str] = field(default_factory=dict)
    """Step name -> its stage folder, for the summary."""
    summary: dict[str, Any] = field(default_factory=dict)
    per_organism_em: list[dict[str, Any]] = field(default_factory=list)
    per_organism_dynamics: list[dict[str, Any]] = field(default_factory=list)


def run_demo(
    cfg: DemoConfig,
    out: Path,
    *,
    root: Path | None = None,
    progress: Callable[[str], None] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Run (or reuse) every stage and write ``summary.json`` and ``report.html`` into ``out``.

    Every step runs on each organism of ``cfg.organisms``; the summary's sections pool over organisms x
    fine-tuning seeds, ``per_organism`` keeps each organism's own numbers, and ``verdicts`` states every
    headline claim with its interval and whether it held.

    Args:
        cfg: what to run.
        out: output folder (created).
        root: run-directory root for the cached stages (default ``spillover.rundir.default_root()``).
        progress: called with a short label before each step (the CLI prints it).
        workers: with more than one, the independent stages first run on that many one-thread worker
            processes (``spillover.studies.demo.parallel``); the results are the same stages either way.

    Returns:
        The summary dict (what summary.json holds).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = Path(root) if root is not None else default_root()
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(cfg, root, progress or (lambda msg: log.info("demo: %s", msg)))
    started = time.perf_counter()
    run.summary["run"] = {
        "title": "spillover demo on the model organism",
        "preset": cfg.preset,
        "seeds": list(cfg.seeds),
        "organisms": list(cfg.organisms),
        "model": f"organism {config_hash(cfg.organism)}",
        "judge": "organism_rule",
        "root": str(root),
        "git_revision": git_revision(),
        "config": to_dict(cfg),
    }
    organisms = _organisms(run)
    say = run.say
    if workers > 1:
        with run.timer.stage("parallel"):
            seconds = prefetch(organisms, cfg, root, workers, run.say)
        run.summary["worker_time_s"] = {
            k: round(s, 1) for k, s in sorted(seconds.items(), key=lambda kv: -kv[1])
        }
        run.say = lambda msg: None  # the stages below only read the workers' finished stages now
    reports = [_geometry(run, o) for o in organisms]
    layers = [risk_layer(r) for r in reports]
    _em(run, [o.art for o in organisms])
    sections = [geometry_section(r, em) for r, em in zip(reports, run.per_organism_em, strict=True)]
    run.summary["geometry"] = pooled_geometry(sections, run.summary["em"])
    _filtering(run, organisms, layers)
    _spillover(run, organisms[0], layers[0])
    _dynamics(run, organisms, layers)
    run.say = say
    run.summary["per_organism"] = per_organism(
        organisms, sections, run.per_organism_em, run.summary.get("filtering"), run.per_organism_dynamics
    )
    run.summary["verdicts"] = verdicts(run.summary)
    run.summary["timings"] = {**run.timer.timings, "total_s": round(time.perf_counter() - started, 2)}
    run.summary["stages"] = run.stages
    run.summary["notes"] = summary_notes(run.summary)
    return _write(out, run.summary)


def _organisms(run: _Run) -> list[_Inputs]:
    from spillover.organism.inputs import organism_corpora, train_organism_saes
    from spillover.organism.pipeline import train_organism

    found = []
    for seed in run.cfg.organisms:
        tag = f"organism {seed}"
        run.say(f"{tag}: install, train or reuse (and its SAEs)")
        with run.timer.stage("organism"):
            art = train_organism(replace(run.cfg.organism, seed=seed), root=run.root, retrain=run.cfg.retrain)
        with run.timer.stage("sae"):
            sae_root = train_organism_saes(art, run.cfg.sae, root=run.root)
        if run.cfg.retrain:
            _compare_with_shipped(run, art)
        run.stages[f"organism_{seed}"] = str(art.run_dir)
        run.stages[f"sae_{seed}"] = str(sae_root)
        found.append(_Inputs(art, sae_root, organism_corpora(art, run.cfg.toxic_domains, run.root)))
    return found


def _compare_with_shipped(run: _Run, art: OrganismArtifacts) -> None:
    """Record how a retrained organism differs from the shipped one of its config (if one is shipped)."""
    from spillover.organism.pipeline import shipped_match
    from spillover.organism.zoo import compare_with_shipped

    entry = shipped_match(art)
    if entry is not None:
        cmp = compare_with_shipped(art.model_dir, entry)
        run.summary["run"].setdefault("retrained_vs_shipped", {})[entry.name] = cmp


def _geometry(run: _Run, inputs: _Inputs) -> dict[str, Any]:
    seed = inputs.art.config.seed
    run.say(f"geometry of every dataset vs the toxic features (organism {seed})")
    with run.timer.stage("geometry"):
        geo_dir = geometry_stage(inputs.art, inputs.sae_root, inputs.corpora, run.cfg, run.root)
    run.stages[f"geometry_{seed}"] = str(geo_dir)
    report: dict[str, Any] = json.loads((geo_dir / "geometry.json").read_text())
    return report


def _em(run: _Run, arts: list[OrganismArtifacts]) -> None:
    from spillover.organism.pipeline import evaluate_organism
    from spillover.studies.filtering import ood_hits, rate_with_ci

    with run.timer.stage("em"):
        run.say("EM before fine-tuning")
        bases = [
            evaluate_organism(a.model_dir, seeded_eval(run.cfg, run.cfg.seeds[0]), root=run.root)
            for a in arts
        ]
        run.summary["em_baseline"] = {
            **rate_with_ci([ood_hits(b.records) for b in bases]),
            "coherent_rate": mean_or_none([b.ood_coherent for b in bases]),
            **exact_em([b.em_probability for b in bases]),
        }
        run.summary["em"], run.per_organism_em = em_runs(arts, run.cfg, run.root, run.say)


def _spillover(run: _Run, inputs: _Inputs, layer: int) -> None:
    cfg = run.cfg.spillover
    if cfg is None:
        return
    run.say(f"spillover measurement ({cfg.dataset}, organism {inputs.art.config.seed})")
    with run.timer.stage("spillover"):
        sp_dir = spillover_stage(inputs.art, inputs.sae_root, inputs.corpora, cfg, layer, run.root)
    run.stages["spillover"] = str(sp_dir)
    run.summary["spillover"] = json.loads((sp_dir / "spillover.json").read_text())


def _filtering(run: _Run, organisms: list[_Inputs], layers: list[int]) -> None:
    if run.cfg.filtering is None:
        return
    from spillover.studies.filtering import collect_filter_runs, filter_section, merge_filter_runs

    fcfg = replace(run.cfg.filtering, seeds=run.cfg.seeds)
    collected = []
    with run.timer.stage("filtering"):
        for inputs, layer in zip(organisms, layers, strict=True):
            collected.append(
                collect_filter_runs(
                    inputs.art,
                    inputs.sae_root / f"layer_{layer}",
                    fcfg,
                    organism=organism_unit_label(inputs.art.config.seed, len(organisms)),
                    toxic=inputs.corpora / "toxic.jsonl",
                    benign=inputs.corpora / "benign.jsonl",
                    root=run.root,
                    on_run=_prefixed(run.say, "filtering: "),
                )
            )
    section = filter_section(merge_filter_runs(collected), fcfg)
    section["geometry_vs"] = geometry_vs_others(section)
    run.summary["filtering"] = section


def _prefixed(say: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda label: say(prefix + label)


def _dynamics(run: _Run, organisms: list[_Inputs], layers: list[int]) -> None:
    if run.cfg.dynamics is None:
        return
    found = []
    with run.timer.stage("dynamics"):
        for inputs, layer in zip(organisms, layers, strict=True):
            seed = inputs.art.config.seed
            run.say(f"training dynamics ({run.cfg.dynamics.dataset}, organism {seed})")
            dyn_dir = dynamics_stage(inputs.art, inputs.sae_root, inputs.corpora, run.cfg, layer, run.root)
            run.stages[f"dynamics_{seed}"] = str(dyn_dir)
            found.append(json.loads((dyn_dir / "dynamics.json").read_text()))
    run.per_organism_dynamics = found
    # The first organism's curve is the one plotted; the claim pools every organism's correlation.
    run.summary["dynamics"] = {
        **found[0],
        "per_organism_pearson_r": [d.get("pearson_r") for d in found],
        "per_organism_pearson_r_exact": [d.get("pearson_r_exact") for d in found],
    }


def _write(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write ``summary.json`` atomically and render ``report.html`` from it; returns what was written."""
    from spillover.report.html import write_html_report

    path = out / "summary.json"
    tmp = path.with_name("summary.json.tmp")
    tmp.write_text(json.dumps(clean_nans(summary), indent=1, allow_nan=False))
    tmp.replace(path)
    write_html_report(out)
    result: dict[str, Any] = json.loads(path.read_text())
    return result
