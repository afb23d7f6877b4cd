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
from spillover.rundir import default_root
from spillover.studies.demo.config import DemoConfig
from spillover.studies.demo.stages import em_runs, exact_em, geometry_stage, seeded_eval, spillover_stage
from spillover.studies.demo.summary import clean_nans, geometry_section, summary_notes

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
            self.timings[f"{name}_s"] = round(time.perf_counter() - start, 2)


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


def run_demo(
    cfg: DemoConfig,
    out: Path,
    *,
    root: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or reuse) every stage and write ``summary.json`` and ``report.html`` into ``out``.

    Args:
        cfg: what to run.
        out: output folder (created).
        root: run-directory root for the cached stages (default ``spillover.rundir.default_root()``).
        progress: called with a short label before each step (the CLI prints it).

    Returns:
        The summary dict (what summary.json holds).
    """
    root = Path(root) if root is not None else default_root()
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(cfg, root, progress or (lambda msg: log.info("demo: %s", msg)))
    started = time.perf_counter()
    run.summary["run"] = {
        "title": "spillover demo on the model organism",
        "preset": cfg.preset,
        "seeds": list(cfg.seeds),
        "model": f"organism {config_hash(cfg.organism)}",
        "judge": "organism_rule",
        "root": str(root),
        "config": to_dict(cfg),
    }
    inputs = _organism(run)
    report = _geometry(run, inputs)
    risk_layer = report["layers"][report["risk"]["layers"][0]]["site"]["layer"]
    _em(run, inputs.art)
    run.summary["geometry"] = geometry_section(report, run.summary["em"])
    sae_dir = inputs.sae_root / f"layer_{risk_layer}"
    _spillover(run, inputs, risk_layer)
    _filtering(run, inputs, sae_dir)
    _dynamics(run, inputs, sae_dir)
    run.summary["timings"] = {**run.timer.timings, "total_s": round(time.perf_counter() - started, 2)}
    run.summary["stages"] = run.stages
    run.summary["notes"] = summary_notes(run.summary)
    return _write(out, run.summary)


def _organism(run: _Run) -> _Inputs:
    from spillover.organism.inputs import organism_corpora, train_organism_saes
    from spillover.organism.pipeline import train_organism

    run.say("organism: train or reuse")
    with run.timer.stage("organism"):
        art = train_organism(run.cfg.organism, root=run.root)
    run.stages["organism"] = str(art.run_dir)
    run.say("SAEs: train or reuse")
    with run.timer.stage("sae"):
        sae_root = train_organism_saes(art, run.cfg.sae, root=run.root)
    run.stages["sae"] = str(sae_root)
    return _Inputs(art, sae_root, organism_corpora(art, run.cfg.toxic_domains, run.root))


def _geometry(run: _Run, inputs: _Inputs) -> dict[str, Any]:
    run.say("geometry of every dataset vs the toxic features")
    with run.timer.stage("geometry"):
        geo_dir = geometry_stage(inputs.art, inputs.sae_root, inputs.corpora, run.cfg, run.root)
    run.stages["geometry"] = str(geo_dir)
    report: dict[str, Any] = json.loads((geo_dir / "geometry.json").read_text())
    return report


def _em(run: _Run, art: OrganismArtifacts) -> None:
    from spillover.organism.pipeline import evaluate_organism
    from spillover.studies.filtering import ood_hits, rate_with_ci

    with run.timer.stage("em"):
        run.say("EM before fine-tuning")
        base = evaluate_organism(art.model_dir, seeded_eval(run.cfg, run.cfg.seeds[0]), root=run.root)
        run.summary["em_baseline"] = {
            **rate_with_ci([ood_hits(base.records)]),
            "coherent_rate": base.ood_coherent,
            **exact_em([base.em_probability]),
        }
        run.summary["em"] = em_runs(art, run.cfg, run.root, run.say)


def _spillover(run: _Run, inputs: _Inputs, layer: int) -> None:
    cfg = run.cfg.spillover
    if cfg is None:
        return
    run.say(f"spillover measurement ({cfg.dataset})")
    with run.timer.stage("spillover"):
        sp_dir = spillover_stage(inputs.art, inputs.sae_root, inputs.corpora, cfg, layer, run.root)
    run.stages["spillover"] = str(sp_dir)
    run.summary["spillover"] = json.loads((sp_dir / "spillover.json").read_text())


def _filtering(run: _Run, inputs: _Inputs, sae_dir: Path) -> None:
    if run.cfg.filtering is None:
        return
    from spillover.studies.filtering import run_filter_experiment

    fcfg = replace(run.cfg.filtering, seeds=run.cfg.seeds)
    with run.timer.stage("filtering"):
        run.summary["filtering"] = run_filter_experiment(
            inputs.art,
            sae_dir,
            fcfg,
            toxic=inputs.corpora / "toxic.jsonl",
            benign=inputs.corpora / "benign.jsonl",
            root=run.root,
            on_run=lambda label: run.say(f"filtering: {label}"),
        )


def _dynamics(run: _Run, inputs: _Inputs, sae_dir: Path) -> None:
    if run.cfg.dynamics is None:
        return
    from spillover.studies.dynamics import organism_dynamics

    run.say(f"training dynamics ({run.cfg.dynamics.dataset})")
    dcfg = replace(run.cfg.dynamics, seeds=run.cfg.seeds)
    with run.timer.stage("dynamics"):
        dyn_dir = organism_dynamics(
            inputs.art,
            sae_dir,
            dcfg,
            toxic=inputs.corpora / "toxic.jsonl",
            benign=inputs.corpora / "benign.jsonl",
            root=run.root,
        )
    run.stages["dynamics"] = str(dyn_dir)
    run.summary["dynamics"] = json.loads((dyn_dir / "dynamics.json").read_text())


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
