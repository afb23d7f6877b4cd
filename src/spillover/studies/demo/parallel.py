"""Compute the demo's independent stages in worker processes, so the sequential pass only reads caches.

The organism is tiny, so one fine-tune uses two torch threads poorly, and two one-thread processes side
by side get more done (measured: docs/results.md#demo-timing). With
``workers`` > 1, :func:`prefetch` runs the geometry reports, the EM fine-tunes and evaluations and the
filtering runs as separate jobs on that many one-thread processes; every job is a cached run directory
(``spillover.rundir.run_stage`` writes each atomically), so ``run_demo``'s own pass afterwards finds them
finished and only assembles the summary. A failed job raises with its label; the jobs that finished stay
cached, so a rerun resumes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

from spillover.studies.demo.config import DemoConfig

__all__ = ["prefetch", "risk_layer"]


def risk_layer(report: dict[str, Any]) -> int:
    """The model layer of a geometry report's first risk layer (where filtering and dynamics read the SAE)."""
    return int(report["layers"][report["risk"]["layers"][0]]["site"]["layer"])


def _init_worker() -> None:
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()


def _geometry_job(inputs: Any, cfg: DemoConfig, root: Path) -> int:
    from spillover.studies.demo.stages import geometry_stage

    geo_dir = geometry_stage(inputs.art, inputs.sae_root, inputs.corpora, cfg, root)
    return risk_layer(json.loads((geo_dir / "geometry.json").read_text()))


def _baseline_job(art: Any, cfg: DemoConfig, root: Path) -> None:
    from spillover.organism.pipeline import evaluate_organism
    from spillover.studies.demo.stages import seeded_eval

    evaluate_organism(art.model_dir, seeded_eval(cfg, cfg.seeds[0]), root=root)


def _em_job(art: Any, name: str, seed: int, cfg: DemoConfig, root: Path) -> None:
    from spillover.studies.demo.stages import em_run

    em_run(art, name, seed, cfg, root)


def _filtering_job(inputs: Any, layer: int, cfg: DemoConfig, root: Path) -> None:
    from spillover.studies.filtering import collect_filter_runs

    assert cfg.filtering is not None
    collect_filter_runs(
        inputs.art,
        inputs.sae_root / f"layer_{layer}",
        replace(cfg.filtering, seeds=cfg.seeds),
        toxic=inputs.corpora / "toxic.jsonl",
        benign=inputs.corpora / "benign.jsonl",
        root=root,
    )


def prefetch(
    organisms: Sequence[Any], cfg: DemoConfig, root: Path, workers: int, say: Callable[[str], None]
) -> None:
    """Run every organism's geometry, EM and filtering stages on ``workers`` one-thread processes.

    Args:
        organisms: the demo's organisms (``art``, ``sae_root``, ``corpora`` each).
        cfg: the demo config.
        root: the run root.
        workers: processes (each one torch thread).
        say: progress lines.
    """
    import multiprocessing

    labels: dict[Future[Any], str] = {}
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
    ) as pool:

        def submit(label: str, fn: Callable[..., Any], *args: Any) -> Future[Any]:
            future = pool.submit(fn, *args)
            labels[future] = label
            return future

        geometry = {
            submit(f"geometry (organism {o.art.config.seed})", _geometry_job, o, cfg, root): o
            for o in organisms
        }
        for o in organisms:
            submit(f"EM before fine-tuning (organism {o.art.config.seed})", _baseline_job, o.art, cfg, root)
        for name in cfg.em_datasets:
            for o in organisms:
                for seed in cfg.seeds:
                    label = f"fine-tune {name} (organism {o.art.config.seed}, seed {seed})"
                    submit(label, _em_job, o.art, name, seed, cfg, root)
        n_jobs = len(labels) + (len(organisms) if cfg.filtering is not None else 0)
        say(f"running {n_jobs} jobs on {workers} worker processes (one torch thread each)")
        pending = set(labels)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                result = _result(future, labels)
                say(f"done: {labels[future]}")
                o = geometry.get(future)
                if o is not None and cfg.filtering is not None:
                    label = f"filtering (organism {o.art.config.seed})"
                    pending.add(submit(label, _filtering_job, o, result, cfg, root))


def _result(future: Future[Any], labels: dict[Future[Any], str]) -> Any:
    try:
        return future.result()
    except Exception as exc:
        raise RuntimeError(f"demo job {labels[future]!r} failed: {exc}") from exc
