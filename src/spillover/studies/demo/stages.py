"""The demo's own cached stages (geometry, spillover) and its EM runs over datasets and seeds."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from spillover.config import to_dict
from spillover.organism.evaluate import EvalConfig
from spillover.organism.pipeline import OrganismArtifacts
from spillover.rundir import run_stage
from spillover.studies.demo.config import DemoConfig, SpilloverConfig

if TYPE_CHECKING:
    from spillover.finetune import FinetuneConfig

__all__ = [
    "dynamics_stage",
    "em_finetune_config",
    "em_run",
    "em_runs",
    "geometry_stage",
    "mean_or_none",
    "seeded_eval",
    "shares_dynamics_finetune",
    "spillover_stage",
]


def seeded_eval(cfg: DemoConfig, seed: int) -> EvalConfig:
    """The demo's evaluation settings with sampling (and prompt draw) seeded by ``seed``."""
    return replace(cfg.eval, sampling=replace(cfg.eval.sampling, seed=seed))


def geometry_stage(art: OrganismArtifacts, sae_dir: Path, corpora: Path, cfg: DemoConfig, root: Path) -> Path:
    """The geometry report of the EM datasets and the organism's other datasets (``geometry.json``)."""
    from spillover.organism.inputs import ORGANISM_DATASETS

    names = tuple(dict.fromkeys((*cfg.em_datasets, *ORGANISM_DATASETS)))

    def fn(out: Path) -> None:
        from spillover.data.chat import load_chat
        from spillover.geometry.report import geometry_report, write_geometry_report
        from spillover.organism.datasets import DATASETS
        from spillover.organism.inputs import ORGANISM_PAIRS
        from spillover.organism.pipeline import load_organism
        from spillover.sae.load import load_saes

        model, tokenizer = load_organism(art.model_dir)
        saes = load_saes(str(sae_dir), model)
        datasets = {n: load_chat(art.dataset(n)) for n in names}
        pairs = [p for p in ORGANISM_PAIRS if p[0] in datasets and p[1] in datasets]
        roles = {n: "inducing" if DATASETS[n].inducing else "dataset" for n in names}
        roles.update({c: "control" for _, c in pairs})
        result = geometry_report(
            model,
            tokenizer,
            saes,
            datasets,
            toxic=load_chat(corpora / "toxic.jsonl"),
            benign=load_chat(corpora / "benign.jsonl"),
            reference=load_chat(corpora / "reference.jsonl"),
            roles=roles,  # type: ignore[arg-type]
            pairs=pairs,
            cfg=cfg.geometry,
            meta={"model": "organism", "sae": str(sae_dir)},
        )
        write_geometry_report(result.report, out, plots=False)

    config = {"geometry": to_dict(cfg.geometry), "datasets": list(names)}
    return run_stage(
        "demo_geometry",
        config,
        fn,
        root=root,
        inputs={"model": art.run_dir, "sae": sae_dir, "corpora": corpora},
    )


def spillover_stage(
    art: OrganismArtifacts, sae_dir: Path, corpora: Path, cfg: SpilloverConfig, layer: int, root: Path
) -> Path:
    """Feature activation changes vs decoder cosines after a few SGD steps (``spillover.json``)."""

    def fn(out: Path) -> None:
        from spillover.data.chat import load_chat
        from spillover.organism.pipeline import load_organism
        from spillover.sae.load import load_sae
        from spillover.theory.network import measure_feature_spillover

        model, tokenizer = load_organism(art.model_dir)
        sae = load_sae(sae_dir / f"layer_{layer}", model)
        res = measure_feature_spillover(
            model,
            tokenizer,
            w_dec_FD=sae.decoder(),
            encode=sae.encode,
            layer=layer,
            narrow=load_chat(art.dataset(cfg.dataset)),
            neutral=load_chat(corpora / "benign.jsonl")[: cfg.n_neutral],
            steps=cfg.steps,
            lr=cfg.lr,
            top_k=cfg.top_k,
        )
        used = res.used
        (out / "spillover.json").write_text(
            json.dumps(
                {
                    "dataset": cfg.dataset,
                    "layer": layer,
                    "pearson_r": res.pearson_r,
                    "spearman_r": res.spearman_r,
                    "pearson_r_projection": res.pearson_r_projection,
                    "spearman_r_projection": res.spearman_r_projection,
                    "shift_cosine": res.shift_cosine,
                    "predicted": res.predictor[used].tolist(),
                    "measured": res.delta_activation[used].tolist(),
                    "n_features": int(used.sum()),
                    "target_features": res.target_features.tolist(),
                    "losses": res.losses,
                },
                allow_nan=True,
            )
        )

    return run_stage(
        "demo_spillover",
        {"spillover": cfg, "layer": layer},
        fn,
        root=root,
        inputs={"model": art.run_dir, "sae": sae_dir, "corpora": corpora, "data": art.dataset(cfg.dataset)},
    )


def em_runs(
    arts: list[OrganismArtifacts], cfg: DemoConfig, root: Path, progress: Callable[[str], None]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fine-tune every organism on every EM dataset with every seed and evaluate.

    Returns:
        The pooled entry per dataset (the misaligned rate over all organism x seed units, with its
        interval; ``per_seed`` lists the units organism by organism), and the same per organism.
    """
    from spillover.organism.datasets import DATASETS

    pooled: dict[str, Any] = {}
    per_organism: list[dict[str, Any]] = [{} for _ in arts]
    for name in cfg.em_datasets:
        runs = [[em_run(art, name, seed, cfg, root, progress) for seed in cfg.seeds] for art in arts]
        for i, organism_runs in enumerate(runs):
            per_organism[i][name] = _em_entry(organism_runs, DATASETS[name].inducing)
        pooled[name] = _em_entry(
            [r for organism_runs in runs for r in organism_runs], DATASETS[name].inducing
        )
    return pooled, per_organism


class EMRun(NamedTuple):
    hits: Any
    coherent: float | None
    in_domain: float | None
    exact: Any


def dynamics_stage(
    art: OrganismArtifacts, sae_dir: Path, corpora: Path, cfg: DemoConfig, layer: int, root: Path
) -> Path:
    """The training dynamics of ``cfg.dynamics`` over the demo's seeds, read with the SAE at ``layer``."""
    from spillover.studies.dynamics import organism_dynamics

    assert cfg.dynamics is not None
    return organism_dynamics(
        art,
        sae_dir / f"layer_{layer}",
        replace(cfg.dynamics, seeds=cfg.seeds),
        toxic=corpora / "toxic.jsonl",
        benign=corpora / "benign.jsonl",
        root=root,
    )


def shares_dynamics_finetune(cfg: DemoConfig, name: str) -> bool:
    """Whether the EM fine-tune on ``name`` is the dynamics run's fine-tune (one cached stage, checkpoints saved)."""
    dyn = cfg.dynamics
    return (
        dyn is not None
        and dyn.dataset == name
        and dyn.finetune_method == cfg.finetune_method
        and dyn.finetune_steps == cfg.finetune_steps
    )


def em_finetune_config(cfg: DemoConfig, name: str, seed: int) -> FinetuneConfig:
    """The recipe of the EM fine-tune on dataset ``name`` with ``seed``."""
    from spillover.organism.pipeline import finetune_config

    ft_cfg = finetune_config(cfg.finetune_method, seed=seed, steps=cfg.finetune_steps)
    if shares_dynamics_finetune(cfg, name):
        assert cfg.dynamics is not None
        ft_cfg = replace(ft_cfg, checkpoint_every=cfg.dynamics.checkpoint_every)
    return ft_cfg


def em_run(
    art: OrganismArtifacts,
    name: str,
    seed: int,
    cfg: DemoConfig,
    root: Path,
    progress: Callable[[str], None] | None = None,
) -> EMRun:
    """One EM unit (cached): fine-tune ``art`` on dataset ``name`` with ``seed``, evaluate, read the numbers."""
    from spillover.organism.pipeline import evaluate_organism, finetune_organism
    from spillover.studies.filtering import in_domain_rate, ood_hits

    if progress is not None:
        progress(f"fine-tune {name} (organism {art.config.seed}, seed {seed})")
    ft = finetune_organism(art, name, cfg.finetune_method, em_finetune_config(cfg, name, seed), root=root)
    result = evaluate_organism(ft, seeded_eval(cfg, seed), root=root)
    return EMRun(
        ood_hits(result.records), result.ood_coherent, in_domain_rate(result, name), result.em_probability
    )


def _em_entry(runs: list[EMRun], inducing: bool) -> dict[str, Any]:
    from spillover.studies.filtering import rate_with_ci

    entry = rate_with_ci([r.hits for r in runs])
    entry.update(
        coherent_rate=mean_or_none([r.coherent for r in runs]),
        coherent_min=min((r.coherent for r in runs if r.coherent is not None), default=None),
        in_domain=mean_or_none([r.in_domain for r in runs]),
        inducing=inducing,
        **exact_em([r.exact for r in runs]),
    )
    return entry


def exact_em(estimates: list[Any]) -> dict[str, Any]:
    """The exact harmful-branch probability (``EvalResult.em_probability``) over fine-tuning seeds.

    ``em_probability`` is the mean estimate; ``em_probability_ci`` the bootstrap interval over prompts for
    one seed, and for several the span of their intervals (conservative: it ignores that seeds average).
    """
    clean = [e for e in estimates if e is not None]
    if not clean:
        return {"em_probability": None, "em_probability_ci": None}
    return {
        "em_probability": sum(e.estimate for e in clean) / len(clean),
        "em_probability_ci": [min(e.interval[0] for e in clean), max(e.interval[1] for e in clean)],
    }


def mean_or_none(values: list[float | None]) -> float | None:
    """The mean of the values that are not None (None when none is)."""
    clean = [v for v in values if v is not None]
    return sum(clean) / len(clean) if clean else None
