"""Geometry-aware filtering on the model organism, over seeds: does removing the samples closest to toxic
features reduce EM more than random removal (the paper: 34.5% relative at 50% removal)?

    .venv/bin/python benchmarks/filtering_organism.py --seeds 0,1,2 [--organism-seeds 0] \\
        [--dataset insecure_mixed] [--fractions 0.5] [--n-eval 250] [--root DIR] [--out results.json] \\
        [--finetune-method lora] [--set model.attention_dropout=0.1]

For each organism seed: train (or reuse) the organism and its SAEs with the demo's configs, then for
every method (four geometry scores, the rule judge, random removal) fine-tune on the filtered set with
each fine-tuning seed and evaluate EM on the out-of-domain questions. Prints one table per organism
(and a pooled one when there are several) with relative reductions and their bootstrap intervals,
what each filter removed by the dataset's ground truth, and whether the issue's criterion (geometry
>= 30% relative reduction and more than random at 50%) holds. Every step is cached under --root.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _pct(v: Any) -> str:
    return "   –  " if v is None else f"{100 * v:6.1f}"


def _ci(v: Any) -> str:
    return "" if not v else f"[{100 * v[0]:.1f}, {100 * v[1]:.1f}]"


def print_table(section: dict[str, Any], title: str) -> None:
    print(
        f"\n== {title}: {section['dataset']}, {100 * section['fraction']:.0f}% removed, seeds {section['seeds']} =="
    )
    print(
        f"{'method':<20}{'EM %':>7}  {'95% CI':<14}{'rel.red %':>10}  {'95% CI':<16}{'per-seed red. %':<24}{'coh %':>6}{'in-dom %':>9}  removed by kind"
    )
    base = section["unfiltered"]
    print(
        f"{'unfiltered':<20}{_pct(base['misaligned_rate']):>7}  {_ci(base['ci']):<14}{'':>10}  {'':<16}{'':<24}{_pct(base['coherent_rate']):>6}{_pct(base['in_domain']):>9}"
    )
    for m in ("geometry", "toxic_activation", "toxic_subspace", "persona_projection", "judge", "random"):
        e = section.get(m)
        if not isinstance(e, dict):
            continue
        per_seed = ",".join("–" if r is None else f"{100 * r:.0f}" for r in e.get("per_seed_reduction", []))
        kinds = ", ".join(
            f"{k} {100 * v:.0f}%" for k, v in e.get("removed", {}).get("removed_share_by_kind", {}).items()
        )
        print(
            f"{m:<20}{_pct(e['misaligned_rate']):>7}  {_ci(e['ci']):<14}{_pct(e['relative_reduction']):>10}  "
            f"{_ci(e['relative_reduction_ci']):<16}{per_seed:<24}{_pct(e['coherent_rate']):>6}{_pct(e['in_domain']):>9}  {kinds}"
        )
    g, r = section.get("geometry"), section.get("random")
    if g and r and g["relative_reduction"] is not None and r["relative_reduction"] is not None:
        ok = g["relative_reduction"] >= 0.30 and g["relative_reduction"] > r["relative_reduction"]
        print(
            f"criterion (geometry >= 30% and > random): {'MET' if ok else 'NOT MET'} "
            f"(geometry {100 * g['relative_reduction']:.1f}%, random {100 * r['relative_reduction']:.1f}%)"
        )


def pooled(sections: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean relative reduction per method over organism seeds (each already averaged over fine-tune seeds)."""
    out: dict[str, Any] = {}
    for m in ("geometry", "toxic_activation", "toxic_subspace", "persona_projection", "judge", "random"):
        vals = [
            s[m]["relative_reduction"]
            for s in sections
            if isinstance(s.get(m), dict) and s[m]["relative_reduction"] is not None
        ]
        if vals:
            out[m] = {"mean_relative_reduction": float(np.mean(vals)), "per_organism": vals}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="fine-tuning / evaluation / random-split seeds")
    parser.add_argument("--organism-seeds", default="0", help="organisms (each trained from scratch)")
    parser.add_argument("--dataset", default="insecure_mixed")
    parser.add_argument("--fractions", default="0.5")
    parser.add_argument(
        "--methods", default="geometry,toxic_activation,toxic_subspace,persona_projection,judge,random"
    )
    parser.add_argument(
        "--schedule",
        default="epochs",
        choices=("steps", "epochs"),
        help="equal steps or equal epochs per run",
    )
    parser.add_argument("--finetune-method", default="full", choices=("full", "lora"))
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="OrganismConfig override, e.g. seed=1."
    )
    parser.add_argument("--n-eval", type=int, default=250, help="answers per evaluation domain")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", type=Path, default=None, help="run cache (default $SPILLOVER_HOME/runs)")
    parser.add_argument("--out", type=Path, default=Path("filtering_organism.json"))
    parser.add_argument("--quick", action="store_true", help="the quick organism (a smoke run, not a result)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    os.environ.setdefault("SPILLOVER_QUIET", "1")
    logging.basicConfig(level=logging.WARNING)
    from spillover.config import load_config, to_dict
    from spillover.geometry.risk import default_risk_layers
    from spillover.organism.evaluate import OOD_DOMAINS, EvalConfig
    from spillover.organism.inputs import organism_corpora, train_organism_saes
    from spillover.organism.pipeline import OrganismConfig, train_organism
    from spillover.rundir import default_root
    from spillover.studies.demo import DemoConfig
    from spillover.studies.filtering import FilterExperimentConfig, run_filter_experiment

    root = args.root or default_root()
    demo = DemoConfig.quick() if args.quick else DemoConfig()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    fractions = tuple(float(f) for f in args.fractions.split(","))
    domain = "medical" if "medical" in args.dataset else "finance" if "finance" in args.dataset else "code"
    eval_cfg = EvalConfig(n_per_domain=args.n_eval, domains=(*OOD_DOMAINS, domain))
    fcfg = replace(
        demo.filtering,
        dataset=args.dataset,
        methods=tuple(args.methods.split(",")),
        fraction=0.5 if 0.5 in fractions else fractions[0],
        fractions=fractions,
        seeds=seeds,
        eval=eval_cfg,
        schedule=args.schedule,
        finetune_method=args.finetune_method,
    )
    organism = load_config(OrganismConfig, to_dict(demo.organism), args.overrides)
    assert isinstance(fcfg, FilterExperimentConfig)
    sections = []
    started = time.perf_counter()
    for org_seed in (int(s) for s in args.organism_seeds.split(",")):
        t0 = time.perf_counter()
        art = train_organism(replace(organism, seed=org_seed), root=root)
        sae_root = train_organism_saes(art, demo.sae, root=root)
        layers = sorted(int(p.name.split("_")[1]) for p in sae_root.glob("layer_*"))
        layer = int(default_risk_layers([f"layer_{x}" for x in layers])[0].split("_")[1])
        corpora = organism_corpora(art, demo.toxic_domains, root)
        print(
            f"organism seed {org_seed}: ready in {time.perf_counter() - t0:.0f}s (SAE layer {layer})",
            flush=True,
        )
        section = run_filter_experiment(
            art,
            sae_root / f"layer_{layer}",
            fcfg,
            toxic=corpora / "toxic.jsonl",
            benign=corpora / "benign.jsonl",
            root=root,
            on_run=lambda label: print(f"  {label}", flush=True),
        )
        section["organism_seed"] = org_seed
        section["sae_layer"] = layer
        sections.append(section)
        print_table(section, f"organism seed {org_seed}")
        for f in fractions:
            if f == fcfg.fraction:
                continue
            print(
                f"  fraction {f:g}: "
                + ", ".join(
                    f"{m} {_pct(section[m]['by_fraction'][f'{f:g}']['relative_reduction'])}%"
                    for m in fcfg.methods
                    if isinstance(section.get(m), dict)
                )
            )
    result: dict[str, Any] = {
        "sections": sections,
        "wall_s": round(time.perf_counter() - started, 1),
        "args": vars(args),
    }
    if len(sections) > 1:
        result["pooled"] = pooled(sections)
        print("\n== pooled over organisms: mean relative reduction ==")
        for m, v in result["pooled"].items():
            print(
                f"{m:<20}{_pct(v['mean_relative_reduction'])}%  per organism: {[round(100 * x, 1) for x in v['per_organism']]}"
            )
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nwrote {args.out} ({result['wall_s']:.0f}s)")


if __name__ == "__main__":
    main()
