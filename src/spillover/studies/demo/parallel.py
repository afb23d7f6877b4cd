"""Compute the demo's independent stages in worker processes, so the sequential pass only reads caches.

The organism is tiny, so one fine-tune uses two torch threads poorly, and two one-thread processes side
by side get more done (measured: docs/results.md#demo-timing). With ``workers`` > 1, :func:`prefetch`
runs every organism's geometry report, EM fine-tunes and evaluations, each filtering fine-tune, the
dynamics and the spillover measurement as separate jobs on that many one-thread processes.

Jobs are small (one fine-tune and its evaluation at most) and :func:`run_jobs` starts the longest ready
job first, so that no worker idles at the end while another finishes a long one. Every job is a cached
run directory (``spillover.rundir.run_stage`` writes each atomically), so ``run_demo``'s own pass
afterwards finds them finished and only assembles the summary. A failed job raises with its label; the
jobs that finished stay cached, so a rerun resumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from spillover.studies.demo.config import DemoConfig

__all__ = ["Job", "JobsDone", "prefetch", "risk_layer", "run_jobs"]

# One-thread seconds of the demo's jobs on the shipped organisms (a cold run's stage manifests,
# docs/results.md#demo-timing). They only order the jobs, longest first.
_STEP_S = 0.06  # one fine-tuning step, LoRA or full (LoRA 120 steps ~7 s, full 240 steps ~14 s)
_EVAL_S = 2.0  # one evaluation (sampled answers and the exact readout)
_GEOMETRY_S = 17.0
_SETS_S = 3.0  # filter scores and the filtered sets
_SMALL_S = 4.0  # dynamics, spillover


@dataclass(frozen=True)
class Job:
    """One unit of work for :func:`run_jobs`."""

    label: str
    """Unique; progress lines and errors name it."""
    kind: str
    """What the job is (``fine-tune (EM)``, ``geometry``, ...): worker time is summed by kind."""
    fn: Callable[..., Any]
    """Run in a worker process: a module-level function (it is pickled)."""
    args: tuple[Any, ...]
    cost: float
    """Estimated seconds of this job and of the longest chain it unlocks; among the ready jobs, the
    costliest starts first."""
    after: tuple[str, ...] = ()
    """Labels of jobs that must finish before this one starts."""
    then: Callable[[Any], Sequence[Job]] | None = None
    """Called in the parent with this job's result: the jobs it unlocks."""


@dataclass
class JobsDone:
    """What :func:`run_jobs` returns."""

    results: dict[str, Any]
    """Each job's result, by label."""
    seconds: dict[str, float]
    """Worker wall time summed by job kind (the jobs' own time, without waiting in the queue)."""


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    return fn(*args), time.perf_counter() - start


def run_jobs(
    jobs: Iterable[Job],
    pool: Executor,
    workers: int,
    say: Callable[[str], None],
    total: int | None = None,
) -> JobsDone:
    """Run ``jobs`` (and those they unlock) on ``pool``, at most ``workers`` at a time.

    Each finished job is reported as ``done: LABEL``, prefixed ``[n/total]`` when ``total`` (the
    expected number of jobs, unlocked ones included) is given.

    Raises:
        ValueError: two jobs share a label, or a job waits on a label that never finishes.
        RuntimeError: a job failed (its label and error; the finished jobs' results are lost, their
            cached stages are not).
    """
    waiting: list[Job] = []
    seen: set[str] = set()

    def add(new: Iterable[Job]) -> None:
        for job in new:
            if job.label in seen:
                raise ValueError(f"two demo jobs are labelled {job.label!r}")
            seen.add(job.label)
            waiting.append(job)

    add(jobs)
    out = JobsDone({}, {})
    running: dict[Future[Any], Job] = {}
    while waiting or running:
        ready = [j for j in waiting if all(a in out.results for a in j.after)]
        for job in sorted(ready, key=lambda j: -j.cost)[: workers - len(running)]:
            waiting.remove(job)
            running[pool.submit(_timed, job.fn, *job.args)] = job
        if not running:
            missing = sorted({a for j in waiting for a in j.after if a not in seen})
            raise ValueError(f"demo jobs {[j.label for j in waiting]} wait on jobs that never run: {missing}")
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            job = running.pop(future)
            try:
                result, seconds = future.result()
            except Exception as exc:
                raise RuntimeError(f"demo job {job.label!r} failed: {exc}") from exc
            out.results[job.label] = result
            out.seconds[job.kind] = out.seconds.get(job.kind, 0.0) + seconds
            count = f"[{len(out.results)}/{total}] " if total else ""
            say(f"{count}done: {job.label}")
            if job.then is not None:
                add(job.then(result))
    return out


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


def _filter_sets_job(inputs: Any, layer: int, cfg: DemoConfig, root: Path) -> list[Any]:
    """Score and filter one organism's dataset; the filtered arms to fine-tune (one per distinct set)."""
    from spillover.studies.filtering import filter_arms, filter_sets

    fcfg = _filter_cfg(cfg)
    dirs = filter_sets(
        inputs.art,
        inputs.sae_root / f"layer_{layer}",
        fcfg,
        toxic=inputs.corpora / "toxic.jsonl",
        benign=inputs.corpora / "benign.jsonl",
        root=root,
    )
    arms, seen = [], set()
    for arm in filter_arms(inputs.art, fcfg, dirs[1] if dirs else None):
        same = (arm.seed, arm.data.read_bytes())
        # Sets that keep the same samples share one fine-tune stage per seed (the unfiltered arms,
        # which come first, are jobs already): run each once, so no two workers write one stage.
        if arm.key is not None and same not in seen:
            arms.append(arm)
        seen.add(same)
    return arms


def _filter_arm_job(art: Any, arm: Any, cfg: DemoConfig, root: Path) -> None:
    from spillover.studies.filtering import run_filter_arm

    run_filter_arm(art, arm, _filter_cfg(cfg), root)


def _dynamics_job(inputs: Any, layer: int, cfg: DemoConfig, root: Path) -> None:
    from spillover.studies.demo.stages import dynamics_stage

    dynamics_stage(inputs.art, inputs.sae_root, inputs.corpora, cfg, layer, root)


def _spillover_job(inputs: Any, layer: int, cfg: DemoConfig, root: Path) -> None:
    from spillover.studies.demo.stages import spillover_stage

    assert cfg.spillover is not None
    spillover_stage(inputs.art, inputs.sae_root, inputs.corpora, cfg.spillover, layer, root)


def _filter_cfg(cfg: DemoConfig) -> Any:
    assert cfg.filtering is not None
    return replace(cfg.filtering, seeds=cfg.seeds)


def _finetune_cost(ft_cfg: Any) -> float:
    return _EVAL_S + _STEP_S * (ft_cfg.max_steps or 0)


def _arm_job(o: Any, arm: Any, cfg: DemoConfig, root: Path) -> Job:
    from spillover.studies.filtering import arm_finetune_config

    cost = _finetune_cost(arm_finetune_config(o.art, arm, _filter_cfg(cfg)))
    label = f"filtering {arm.label} (organism {o.art.config.seed})"
    return Job(label, "fine-tune (filtering)", _filter_arm_job, (o.art, arm, cfg, root), cost)


def demo_jobs(organisms: Sequence[Any], cfg: DemoConfig, root: Path) -> list[Job]:
    """Every job of the demo on ``organisms`` that can start now; the rest follow from their results."""
    from spillover.studies.demo.stages import em_finetune_config

    jobs: list[Job] = []
    for i, o in enumerate(organisms):
        tag = f"organism {o.art.config.seed}"
        # The unfiltered fine-tunes need no filter scores: they start now. The filter-scores job that
        # geometry unlocks is ranked by its chain: its longest fine-tune is at most an unfiltered one.
        unfiltered = _unfiltered_jobs(o, cfg, root)
        sets_cost = _SETS_S + max((j.cost for j in unfiltered), default=0.0) if cfg.filtering else 0.0
        jobs.append(
            Job(
                f"geometry ({tag})",
                "geometry",
                _geometry_job,
                (o, cfg, root),
                _GEOMETRY_S + max(sets_cost, _SMALL_S),
                then=_after_geometry(o, cfg, root, i == 0, sets_cost),
            )
        )
        jobs.append(
            Job(
                f"EM before fine-tuning ({tag})",
                "evaluation (base)",
                _baseline_job,
                (o.art, cfg, root),
                _EVAL_S,
            )
        )
        for name in cfg.em_datasets:
            for seed in cfg.seeds:
                label = f"fine-tune {name} ({tag}, seed {seed})"
                cost = _finetune_cost(em_finetune_config(cfg, name, seed))
                jobs.append(Job(label, "fine-tune (EM)", _em_job, (o.art, name, seed, cfg, root), cost))
        jobs += unfiltered
    return jobs


def _unfiltered_jobs(o: Any, cfg: DemoConfig, root: Path) -> list[Job]:
    if cfg.filtering is None:
        return []
    from spillover.studies.filtering import filter_arms

    return [
        _arm_job(o, arm, cfg, root) for arm in filter_arms(o.art, replace(_filter_cfg(cfg), methods=()), None)
    ]


def _after_geometry(
    o: Any, cfg: DemoConfig, root: Path, first: bool, sets_cost: float
) -> Callable[[int], list[Job]]:
    """The jobs that read the organism's SAE at its risk layer, which its geometry report names."""
    from spillover.studies.demo.stages import shares_dynamics_finetune

    tag = f"organism {o.art.config.seed}"

    def then(layer: int) -> list[Job]:
        jobs = []
        if cfg.filtering is not None:
            jobs.append(
                Job(
                    f"filter scores ({tag})",
                    "filter scores",
                    _filter_sets_job,
                    (o, layer, cfg, root),
                    sets_cost,
                    then=_arm_jobs(o, cfg, root),
                )
            )
        if cfg.dynamics is not None:
            # Where it reuses the EM fine-tunes of its dataset (one stage), it waits for them.
            name = cfg.dynamics.dataset
            shared = shares_dynamics_finetune(cfg, name) and name in cfg.em_datasets
            after = tuple(f"fine-tune {name} ({tag}, seed {s})" for s in cfg.seeds) if shared else ()
            jobs.append(
                Job(
                    f"training dynamics ({tag})",
                    "dynamics",
                    _dynamics_job,
                    (o, layer, cfg, root),
                    _SMALL_S,
                    after,
                )
            )
        if first and cfg.spillover is not None:
            jobs.append(
                Job(
                    f"spillover measurement ({tag})",
                    "spillover",
                    _spillover_job,
                    (o, layer, cfg, root),
                    _SMALL_S,
                )
            )
        return jobs

    return then


def _arm_jobs(o: Any, cfg: DemoConfig, root: Path) -> Callable[[list[Any]], list[Job]]:
    return lambda arms: [_arm_job(o, arm, cfg, root) for arm in arms]


def _n_jobs(organisms: Sequence[Any], cfg: DemoConfig) -> int:
    """How many jobs the demo runs (filtered sets that coincide run once, so it may run fewer)."""
    per = 2 + len(cfg.em_datasets) * len(cfg.seeds) + (cfg.dynamics is not None)
    if cfg.filtering is not None:
        fcfg = _filter_cfg(cfg)
        per += 1 + len(cfg.seeds) * (1 + len(fcfg.methods) * len(fcfg.all_fractions))
    return len(organisms) * per + (cfg.spillover is not None)


def prefetch(
    organisms: Sequence[Any], cfg: DemoConfig, root: Path, workers: int, say: Callable[[str], None]
) -> dict[str, float]:
    """Run every organism's geometry, EM, filtering, dynamics and spillover stages on ``workers``
    one-thread processes; the workers' seconds by job kind.

    Args:
        organisms: the demo's organisms (``art``, ``sae_root``, ``corpora`` each).
        cfg: the demo config.
        root: the run root.
        workers: processes (each one torch thread).
        say: progress lines.
    """
    import multiprocessing

    jobs = demo_jobs(organisms, cfg, root)
    total = _n_jobs(organisms, cfg)
    say(f"running {total} jobs on {workers} worker processes (one torch thread each)")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
    ) as pool:
        return run_jobs(jobs, pool, workers, say, total).seconds
