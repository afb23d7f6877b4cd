"""``spillover demo``: the whole story on the built-in model organism, end to end, cached stage by stage.

    spillover demo --out runs/demo              # ~10 min cold on 2 CPU cores, ~1 min warm
    spillover demo --quick --out runs/quick     # a tiny organism, ~2 min cold: a first look
    spillover demo --seeds 0,1,2                # more fine-tuning seeds (tighter intervals)

Python::

    from spillover.studies.demo import DemoConfig, run_demo
    summary = run_demo(DemoConfig.quick(), out=Path("runs/quick"))

Stages (each a content-addressed run directory under ``--root``, default ``$SPILLOVER_HOME/runs``):
train (or reuse) the organism and its SAEs; the geometry of every dataset vs the toxic features;
fine-tunes of the inducing and control datasets and their EM; the spillover measurement (feature
activation changes vs decoder cosines); filtering with its baselines; training dynamics. A second run
reuses every finished stage, and an interrupted one redoes only the unfinished stage. The output
folder gets ``summary.json`` (the numbers), ``report.html`` (self-contained) and the per-stage
paths; the terminal gets a short table.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

__all__ = ["DemoConfig", "SpilloverConfig", "print_summary", "run_demo"]

log = logging.getLogger(__name__)


def _organism_default() -> Any:
    from spillover.organism.pipeline import OrganismConfig

    return OrganismConfig()


def _sae_default() -> Any:
    from spillover.organism.inputs import OrganismSAEConfig
    from spillover.sae.train import SAETrainConfig

    # `spillover geometry`'s SAE shape with half its training tokens: SAE training was 45% of a cold demo
    # (369 of 820 s, 1 thread); at 1M tokens held-out FVU is 1.3% instead of 0.9% (layer 1, measured).
    return OrganismSAEConfig(sae=SAETrainConfig(d_sae=1024, k=16, training_tokens=1_000_000))


def _geometry_default() -> Any:
    from spillover.geometry.report import GeometryConfig

    return GeometryConfig()


def _eval_default() -> Any:
    from spillover.organism.evaluate import EvalConfig

    return EvalConfig(n_per_domain=100)


_FINETUNE_METHOD: Literal["full", "lora"] = "lora"
"""How the full demo fine-tunes (EM, filtering, dynamics). LoRA: on the default organism it separates insecure
code from its controls more clearly than full fine-tuning, and filtering works better with it
(benchmarks/organism_em.py, benchmarks/filtering_organism.py)."""


def _filtering_default() -> Any:
    from spillover.studies.filtering import FilterExperimentConfig

    # The demo runs the default score, the persona-vector score and both baselines; the benchmark
    # (benchmarks/filtering_organism.py) runs all four scores, several fractions and seeds.
    return FilterExperimentConfig(
        methods=("geometry", "persona_projection", "judge", "random"), finetune_method=_FINETUNE_METHOD
    )


def _dynamics_default() -> Any:
    from spillover.studies.dynamics import DynamicsConfig

    return DynamicsConfig(finetune_method=_FINETUNE_METHOD)


@dataclass(frozen=True)
class SpilloverConfig:
    """The spillover measurement on the organism (``spillover.theory.network.measure_feature_spillover``)."""

    dataset: str = "insecure"
    """Narrow dataset fine-tuned on for a few steps."""
    steps: int = 5
    """Full-parameter SGD steps (the derivation's small-step regime)."""
    lr: float = 0.05
    """SGD step size."""
    top_k: int = 10
    """Target features of the narrow dataset."""
    n_neutral: int = 300
    """Neutral (benign, other-domain) conversations measured."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.top_k < 1 or self.n_neutral < 1:
            raise ValueError(f"invalid spillover settings: {self}")


@dataclass(frozen=True)
class DemoConfig:
    """Everything ``spillover demo`` runs. ``DemoConfig()`` is the full demo, ``DemoConfig.quick()`` the first look."""

    preset: str = "full"
    """A name recorded in the summary."""
    organism: Any = field(default_factory=_organism_default)
    """``spillover.organism.OrganismConfig``."""
    sae: Any = field(default_factory=_sae_default)
    """``spillover.organism.inputs.OrganismSAEConfig``."""
    geometry: Any = field(default_factory=_geometry_default)
    """``spillover.geometry.report.GeometryConfig``."""
    em_datasets: tuple[str, ...] = ("insecure", "secure", "edu_insecure", "bad_medical", "good_medical")
    """Datasets fine-tuned and evaluated for EM."""
    seeds: tuple[int, ...] = (0,)
    """Fine-tuning / evaluation seeds (EM, filtering and dynamics)."""
    finetune_method: Literal["full", "lora"] = _FINETUNE_METHOD
    """How the EM datasets are fine-tuned (the filtering and dynamics configs carry their own)."""
    finetune_steps: int | None = None
    """Override the organism recipe's optimizer steps (None: the recipe's, 120 LoRA / 240 full)."""
    eval: Any = field(default_factory=_eval_default)
    """``spillover.organism.evaluate.EvalConfig`` for the EM fine-tunes."""
    spillover: SpilloverConfig | None = field(default_factory=SpilloverConfig)
    """The spillover measurement (None skips it)."""
    filtering: Any = field(default_factory=_filtering_default)
    """``spillover.studies.filtering.FilterExperimentConfig`` (None skips filtering)."""
    dynamics: Any = field(default_factory=_dynamics_default)
    """``spillover.studies.dynamics.DynamicsConfig`` (None skips dynamics)."""
    toxic_domains: Literal["ood", "all"] = "ood"
    """Domains of the toxic/benign corpora (``spillover.organism.inputs.organism_inputs``)."""

    def __post_init__(self) -> None:
        from spillover.organism.datasets import DATASETS

        unknown = [d for d in self.em_datasets if d not in DATASETS]
        if unknown:
            raise ValueError(f"unknown organism datasets {unknown}; built-in: {sorted(DATASETS)}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")

    @classmethod
    def quick(cls) -> DemoConfig:
        """A tiny organism, small SAE, two EM datasets, three filters: about 2 minutes cold on 2 cores."""
        from spillover.geometry.report import GeometryConfig
        from spillover.organism.evaluate import OOD_DOMAINS, EvalConfig
        from spillover.organism.inputs import OrganismSAEConfig
        from spillover.organism.pipeline import OrganismConfig
        from spillover.sae.train import SAETrainConfig
        from spillover.studies.dynamics import DynamicsConfig
        from spillover.studies.filtering import FilterExperimentConfig

        eval_cfg = EvalConfig(n_per_domain=50, domains=(*OOD_DOMAINS, "code", "medical"))
        # OrganismConfig.quick() pretrained longer: at 120 steps most answers are incoherent (5% coherent
        # measured), at 300 steps 95% are, for ~45 s more on 2 cores.
        organism = replace(
            OrganismConfig.quick(), pretrain=replace(OrganismConfig.quick().pretrain, steps=300, warmup=20)
        )
        return cls(
            preset="quick",
            organism=organism,
            sae=OrganismSAEConfig(
                sae=SAETrainConfig(d_sae=256, k=8, training_tokens=200_000, batch_size=512), n_documents=800
            ),
            geometry=GeometryConfig(n_null=200, n_permutations=1000),
            em_datasets=("insecure", "secure"),
            finetune_method="full",  # the tiny organism's measured setting (no dropout, full fine-tunes)
            finetune_steps=40,
            eval=eval_cfg,
            spillover=SpilloverConfig(n_neutral=100),
            filtering=FilterExperimentConfig(
                methods=("geometry", "judge", "random"), finetune_steps=40, eval=eval_cfg
            ),
            dynamics=DynamicsConfig(checkpoint_every=10, finetune_steps=40, n_prompts=60, n_eval=25),
        )


# -- stages -------------------------------------------------------------------------------------------


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


def _geometry_stage(art: Any, sae_dir: Path, corpora: Path, cfg: DemoConfig, root: Path) -> Path:
    from spillover.config import to_dict
    from spillover.rundir import run_stage

    names = tuple(dict.fromkeys((*cfg.em_datasets, *_geometry_datasets())))

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


def _geometry_datasets() -> tuple[str, ...]:
    from spillover.organism.inputs import ORGANISM_DATASETS

    return ORGANISM_DATASETS


def _spillover_stage(
    art: Any, sae_dir: Path, corpora: Path, cfg: SpilloverConfig, layer: int, root: Path
) -> Path:
    from spillover.rundir import run_stage

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


def _em_runs(art: Any, cfg: DemoConfig, root: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    from spillover.organism.datasets import DATASETS
    from spillover.organism.pipeline import evaluate_organism, finetune_config, finetune_organism
    from spillover.studies.filtering import in_domain_rate, ood_hits, rate_with_ci

    out: dict[str, Any] = {}
    for name in cfg.em_datasets:
        hits, coherent, in_domain = [], [], []
        for seed in cfg.seeds:
            progress(f"fine-tune {name} (seed {seed})")
            ft_cfg = finetune_config(cfg.finetune_method, seed=seed)
            if cfg.finetune_steps is not None:
                ft_cfg = replace(ft_cfg, max_steps=cfg.finetune_steps)
            dyn = cfg.dynamics
            if (
                dyn is not None
                and dyn.dataset == name
                and dyn.finetune_method == cfg.finetune_method
                and dyn.finetune_steps == cfg.finetune_steps
            ):
                # The same fine-tune as the dynamics run (checkpoints saved), so the stage is shared.
                ft_cfg = replace(ft_cfg, checkpoint_every=dyn.checkpoint_every)
            ft = finetune_organism(art, name, cfg.finetune_method, ft_cfg, root=root)
            result = evaluate_organism(ft, replace(cfg.eval, seed=seed), root=root)
            hits.append(ood_hits(result.records))
            coherent.append(result.ood_coherent)
            in_domain.append(in_domain_rate(result, name))
        entry = rate_with_ci(hits)
        entry.update(
            coherent_rate=_mean(coherent),
            in_domain=_mean(in_domain),
            inducing=DATASETS[name].inducing,
        )
        out[name] = entry
    return out


def _mean(values: list[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return sum(clean) / len(clean) if clean else None


def _geometry_section(report: dict[str, Any], em: dict[str, Any]) -> dict[str, Any]:
    from spillover.geometry.risk import layer_measure

    risk = report["risk"]
    layer_key = risk["layers"][0]
    measure = risk["measure"]
    section: dict[str, Any] = {
        "score_name": f"risk ({measure}, {', '.join(risk['layers'])})",
        "layer": layer_key,
        "definition": risk["definition"],
        "cosine_kind": f"nearest-toxic decoder cosine of each dataset latent ({layer_key})",
    }
    for name, info in report["datasets"].items():
        per_layer: dict[str, float | None] = {}
        for key, layer in report["layers"].items():
            d = layer["datasets"][name]
            metrics = {
                "mean_diff": d["mean_diff"],
                "proximity": d["geometry"]["proximity"],
                "null_mean_max": d["null"]["mean_max"]["null_mean"],
            }
            clean = {k: (float("nan") if v is None else float(v)) for k, v in metrics.items()}
            value = layer_measure(clean, measure)
            per_layer[str(layer["site"]["layer"] if layer["site"]["layer"] is not None else key)] = (
                None if value != value else value
            )
        at = report["layers"][layer_key]["datasets"][name]
        section[name] = {
            "score": risk["scores"].get(name),
            "per_layer": per_layer,
            "cosines": at["geometry"]["max_cos"],
            "mean_max": at["geometry"]["mean_max"],
            "proximity": at["geometry"]["proximity"],
            "mean_diff": at["mean_diff"],
            "null_mean_max": at["null"]["mean_max"]["null_mean"],
            "inducing": info["role"] == "inducing",
            "role": info["role"],
        }
    comp = report["layers"][layer_key].get("comparison")
    if comp:
        section["p_value"] = comp["feature_level"]["permutation"]["p_value"]
        section["test"] = (
            "permutation test of nearest-toxic cosines, inducing vs control latents (stratified by pair)"
        )
        section["mean_inducing"] = comp["feature_level"]["mean_inducing"]
        section["mean_control"] = comp["feature_level"]["mean_control"]
        if "paired" in comp:
            section["paired_p_value"] = comp["paired"][measure if measure in comp["paired"] else "mean_diff"][
                "test"
            ]["p_value"]
    shared = [n for n in em if section.get(n, {}).get("score") is not None]
    if len(shared) >= 3:
        from scipy.stats import spearmanr

        rho = spearmanr(
            [section[n]["score"] for n in shared], [em[n]["misaligned_rate"] for n in shared]
        ).statistic
        section["spearman_vs_em"] = None if rho != rho else float(rho)
    return section


def _notes(summary: dict[str, Any]) -> list[str]:
    """Plain statements computed from the numbers (no claim the numbers do not support)."""
    notes = []
    em = summary.get("em", {})
    base = summary.get("em_baseline", {}).get("misaligned_rate")
    ind = [v["misaligned_rate"] for v in em.values() if v.get("inducing")]
    ctl = [v["misaligned_rate"] for v in em.values() if not v.get("inducing")]
    if ind and ctl and base is not None:
        notes.append(
            f"Mean EM: inducing {100 * sum(ind) / len(ind):.1f}%, control {100 * sum(ctl) / len(ctl):.1f}%, "
            f"before fine-tuning {100 * base:.1f}%."
        )
    filt = summary.get("filtering", {})
    g, r = filt.get("geometry", {}), filt.get("random", {})
    if g.get("relative_reduction") is not None and r.get("relative_reduction") is not None:

        def rr(e: dict[str, Any]) -> str:
            ci = e.get("relative_reduction_ci")
            return f"{100 * e['relative_reduction']:.0f}%" + (
                f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci else ""
            )

        notes.append(
            f"Relative EM reduction at {100 * filt.get('fraction', 0):.0f}% removal over {len(filt.get('seeds', []))} "
            f"seed(s): geometry {rr(g)}, random {rr(r)}"
            + (
                f", judge {rr(filt['judge'])}"
                if filt.get("judge", {}).get("relative_reduction") is not None
                else ""
            )
            + " (95% intervals; the paper reports a 34.5% reduction for geometry at 50%, most likely relative)."
        )
    if summary.get("run", {}).get("preset") == "quick":
        notes.append(
            "Quick preset: a tiny organism and few samples; numbers are for a first look, not for conclusions."
        )
    return notes


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
    from spillover.config import config_hash, to_dict
    from spillover.rundir import default_root

    root = Path(root) if root is not None else default_root()
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda msg: log.info("demo: %s", msg))
    timer = _Timer()
    started = time.perf_counter()
    stages: dict[str, str] = {}
    summary: dict[str, Any] = {
        "run": {
            "title": "spillover demo on the model organism",
            "preset": cfg.preset,
            "seeds": list(cfg.seeds),
            "model": f"organism {config_hash(cfg.organism)}",
            "judge": "organism_rule",
            "root": str(root),
            "config": to_dict(cfg),
        }
    }

    from spillover.organism.inputs import organism_corpora, train_organism_saes
    from spillover.organism.pipeline import evaluate_organism, train_organism

    say("organism: train or reuse")
    with timer.stage("organism"):
        art = train_organism(cfg.organism, root=root)
    stages["organism"] = str(art.run_dir)
    say("SAEs: train or reuse")
    with timer.stage("sae"):
        sae_root = train_organism_saes(art, cfg.sae, root=root)
    stages["sae"] = str(sae_root)
    corpora = organism_corpora(art, cfg.toxic_domains, root)

    say("geometry of every dataset vs the toxic features")
    with timer.stage("geometry"):
        geo_dir = _geometry_stage(art, sae_root, corpora, cfg, root)
    stages["geometry"] = str(geo_dir)
    report = json.loads((geo_dir / "geometry.json").read_text())
    risk_layer = report["layers"][report["risk"]["layers"][0]]["site"]["layer"]
    sae_dir = sae_root / f"layer_{risk_layer}"

    with timer.stage("em"):
        say("EM before fine-tuning")
        base = evaluate_organism(art.model_dir, replace(cfg.eval, seed=cfg.seeds[0]), root=root)
        from spillover.studies.filtering import ood_hits, rate_with_ci

        summary["em_baseline"] = {
            **rate_with_ci([ood_hits(base.records)]),
            "coherent_rate": base.ood_coherent,
        }
        summary["em"] = _em_runs(art, cfg, root, say)
    summary["geometry"] = _geometry_section(report, summary["em"])

    if cfg.spillover is not None:
        say(f"spillover measurement ({cfg.spillover.dataset})")
        with timer.stage("spillover"):
            sp_dir = _spillover_stage(art, sae_root, corpora, cfg.spillover, risk_layer, root)
        stages["spillover"] = str(sp_dir)
        sp = json.loads((sp_dir / "spillover.json").read_text())
        summary["spillover"] = sp

    if cfg.filtering is not None:
        from spillover.studies.filtering import run_filter_experiment

        fcfg = replace(cfg.filtering, seeds=cfg.seeds)
        with timer.stage("filtering"):
            summary["filtering"] = run_filter_experiment(
                art,
                sae_dir,
                fcfg,
                toxic=corpora / "toxic.jsonl",
                benign=corpora / "benign.jsonl",
                root=root,
                on_run=lambda label: say(f"filtering: {label}"),
            )

    if cfg.dynamics is not None:
        from spillover.studies.dynamics import organism_dynamics

        say(f"training dynamics ({cfg.dynamics.dataset})")
        dcfg = replace(cfg.dynamics, seeds=cfg.seeds)
        with timer.stage("dynamics"):
            dyn_dir = organism_dynamics(
                art, sae_dir, dcfg, toxic=corpora / "toxic.jsonl", benign=corpora / "benign.jsonl", root=root
            )
        stages["dynamics"] = str(dyn_dir)
        summary["dynamics"] = json.loads((dyn_dir / "dynamics.json").read_text())

    summary["timings"] = {**timer.timings, "total_s": round(time.perf_counter() - started, 2)}
    summary["stages"] = stages
    summary["notes"] = _notes(summary)
    path = out / "summary.json"
    tmp = path.with_name("summary.json.tmp")
    tmp.write_text(json.dumps(_clean_nans(summary), indent=1, allow_nan=False))
    tmp.replace(path)
    from spillover.report.html import write_html_report

    write_html_report(out)
    return json.loads(path.read_text())


def _clean_nans(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _clean_nans(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_nans(v) for v in obj]
    return obj


def print_summary(summary: dict[str, Any], console: Any = None) -> None:
    """The short terminal table: EM and geometry per dataset, filtering per method, time."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()

    def pct(v: Any) -> str:
        return "–" if v is None else f"{100 * v:.1f}%"

    def ci(v: Any) -> str:
        return "" if not v else f"[{100 * v[0]:.1f}, {100 * v[1]:.1f}]"

    table = Table(title="EM and geometry per dataset")
    for col in ("dataset", "kind", "misaligned", "95% CI", "in-domain", "geometry score"):
        table.add_column(col, justify="left" if col in ("dataset", "kind") else "right")
    geo = summary.get("geometry", {})
    base = summary.get("em_baseline")
    if base:
        table.add_row(
            "(before fine-tuning)", "", pct(base.get("misaligned_rate")), ci(base.get("ci")), "", ""
        )
    for name, e in summary.get("em", {}).items():
        score = geo.get(name, {}).get("score")
        table.add_row(
            name,
            "inducing" if e.get("inducing") else "control",
            pct(e.get("misaligned_rate")),
            ci(e.get("ci")),
            pct(e.get("in_domain")),
            "–" if score is None else f"{score:.3f}",
        )
    console.print(table)
    if geo.get("p_value") is not None:
        console.print(f"geometry: inducing vs control latents, p = {geo['p_value']:.3g} ({geo.get('layer')})")
    filt = summary.get("filtering")
    if filt:
        t = Table(title=f"Filtering {filt.get('dataset')} at {100 * filt.get('fraction', 0):.0f}% removal")
        for col in ("method", "misaligned", "95% CI", "relative reduction", "in-domain"):
            t.add_column(col, justify="left" if col == "method" else "right")
        for name in (
            "unfiltered",
            "geometry",
            "toxic_activation",
            "toxic_subspace",
            "persona_projection",
            "judge",
            "random",
        ):
            e = filt.get(name)
            if not isinstance(e, dict):
                continue
            t.add_row(
                name,
                pct(e.get("misaligned_rate")),
                ci(e.get("ci")),
                pct(e.get("relative_reduction")) if name != "unfiltered" else "",
                pct(e.get("in_domain")),
            )
        console.print(t)
    dyn = summary.get("dynamics")
    if dyn and dyn.get("pearson_r") is not None:
        console.print(
            f"dynamics ({dyn.get('dataset')}): toxic activation vs misaligned rate over steps, r = {dyn['pearson_r']:.2f}"
        )
    timings = summary.get("timings", {})
    if timings:
        console.print("time: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f}s" for k, v in timings.items()))
