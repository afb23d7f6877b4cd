"""Mitigation on the organism, head to head: data filters against the training-time defenses (a)-(f).

    .venv/bin/python benchmarks/mitigation_organism.py [--organisms 0,1,2] [--seeds 0,1,2] \\
        [--dataset insecure_alltask] [--fractions 0.1,0.25,0.5,0.75] \\
        [--methods geometry,random,judge,persona_projection] [--defenses all] [--n-eval 100] \\
        [--set defense.kl_beta=0.3] [--root DIR] [--out mitigation_organism.json]
    .venv/bin/python benchmarks/mitigation_organism.py --quick     # a smoke run, ~2 CPU minutes

For each organism seed (the shipped organisms with the demo's SAEs; ``--quick``: the quick demo's tiny
organism) and fine-tuning seed: the unfiltered fine-tune, every filter at every fraction, and every
defense arm (``spillover.studies.defense_arms``), each evaluated for EM, coherence and in-domain task
retention. Runs are paired by unit (organism, fine-tuning seed). Prints one table: EM, coherence,
in-domain retention, relative reduction vs unfiltered with its paired interval; then geometry minus
random at each fraction (paired interval), and each defense against geometry filtering at the defense's
own retention (arm minus filter, pp, paired interval). Writes everything as JSON. Every fine-tune and
evaluation is a cached stage under --root, so a rerun computes only what is missing.
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


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s.strip())


def _pct(v: Any, ci: Any = None) -> str:
    if v is None:
        return "-"
    out = f"{100 * v:.1f}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        out += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return out


def build_config(args: argparse.Namespace) -> Any:
    from spillover.config import deep_merge, from_dict, parse_overrides, to_dict
    from spillover.studies.mitigate import MitigateConfig

    base = MitigateConfig.quick() if args.quick else MitigateConfig()
    filtering = replace(
        base.filtering,
        dataset=args.dataset,
        methods=tuple(m for m in args.methods.split(",") if m),
        fractions=tuple(float(f) for f in args.fractions.split(",")),
        fraction=0.5 if "0.5" in args.fractions.split(",") else float(args.fractions.split(",")[0]),
        seeds=args.seeds,
    )
    if args.n_eval is not None:
        filtering = replace(filtering, eval=replace(filtering.eval, n_per_domain=args.n_eval))
    if args.steps is not None:
        filtering = replace(filtering, finetune_steps=args.steps)
    defenses = tuple(d for d in args.defenses.split(",") if d)
    cfg = replace(base, filtering=filtering, defenses=defenses)
    if args.set:
        cfg = from_dict(MitigateConfig, deep_merge(to_dict(cfg), parse_overrides(args.set)))
    return cfg


def geometry_vs_random(cfg: Any, runs: Any) -> dict[str, Any]:
    """Geometry minus random EM at each fraction, paired by unit: sampled (difference and ratio intervals)
    and ``exact`` (the exact EM probability, t interval over units)."""
    from spillover.studies.demo.pooled import paired_difference
    from spillover.studies.filtering_stats import paired_exact

    out: dict[str, Any] = {}
    if "geometry" not in cfg.filtering.methods or "random" not in cfg.filtering.methods:
        return out
    units = sorted(runs.unfiltered)
    for f in cfg.filtering.all_fractions:
        geo = [runs.filtered[("geometry", f)][u] for u in units]
        rnd = [runs.filtered[("random", f)][u] for u in units]
        out[f"{f:g}"] = paired_difference([r.hits for r in geo], [r.hits for r in rnd])
        out[f"{f:g}"]["exact"] = paired_exact(
            [r.em_probability for r in geo], [r.em_probability for r in rnd]
        )
    return out


def print_report(summary: dict[str, Any]) -> None:
    section = summary["filtering"]
    print(f"\n== mitigation on {summary['dataset']}: units {', '.join(section['units'])} ==")
    print(
        f"{'kind':<11}{'name':<20}{'frac':>5}  {'EM % [95% CI]':<22}{'rel.red. % [CI]':<26}"
        f"{'exact %':>8}  {'exact rel.red. % [CI]':<26}{'coh':>6}{'in-dom %':>9}{'Δ pp':>7}"
    )
    for r in summary["table"]:
        frac = "" if r["fraction"] is None else f"{r['fraction']:g}"
        coh = "-" if r["coherent_rate"] is None else f"{r['coherent_rate']:.2f}"
        delta = "-" if r["retention_change"] is None else f"{100 * r['retention_change']:+.1f}"
        print(
            f"{r['kind']:<11}{r['name']:<20}{frac:>5}  {_pct(r['misaligned_rate'], r['ci']):<22}"
            f"{_pct(r['relative_reduction'], r['relative_reduction_ci']):<26}{_pct(r['em_probability']):>8}  "
            f"{_pct(r['exact_relative_reduction'], r['exact_relative_reduction_ci']):<26}"
            f"{coh:>6}{_pct(r['in_domain']):>9}{delta:>7}"
        )
    gvr = summary.get("geometry_vs_random", {})
    if gvr:
        print("\ngeometry minus random EM (pp, paired over units):")
        for f, d in gvr.items():
            ex = d.get("exact") or {}
            exact = (
                f"; exact {100 * ex['difference']:+.2f} [{100 * ex['difference_ci'][0]:.2f}, {100 * ex['difference_ci'][1]:.2f}]"
                if ex.get("difference_ci")
                else ""
            )
            print(
                f"  at {f}: sampled {100 * d['difference']:+.1f} [{100 * d['difference_ci'][0]:.1f}, "
                f"{100 * d['difference_ci'][1]:.1f}]{exact}"
            )
    print("\ndefense minus geometry filtering at the defense's retention (pp; < 0: the defense has less EM):")
    for name, entry in summary["arms"].items():
        vs = entry.get("vs_filters", {})
        geo = vs.get("geometry")
        if not isinstance(geo, dict):
            print(f"  {name:<12} not computed ({vs.get('unavailable', 'no geometry filter')})")
            continue
        ci = geo["arm_minus_filter_ci"]
        verdict = (
            "n/a"
            if ci is None
            else "defense better"
            if ci[1] < 0
            else "geometry better"
            if ci[0] > 0
            else "no difference"
        )
        print(
            f"  {name:<12} {100 * geo['arm_minus_filter']:+.1f} {'' if ci is None else f'[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]'}"
            f"  retention {_pct(vs['retention'])}%, geometry read at fraction {geo['filter_fraction']:.2f}"
            f" ({'at' if geo['at_target'] else 'not at'} that retention): {verdict}  -- {entry.get('defense') or ''}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--organisms", type=_ints, default=None, help="organism seeds (default 0,1,2; --quick: 0)")
    p.add_argument(
        "--seeds", type=_ints, default=None, help="fine-tuning seeds (default 0,1,2; --quick: 0,1)"
    )
    p.add_argument("--dataset", default="insecure_alltask")
    p.add_argument("--fractions", default=None, help="default 0.1,0.25,0.5,0.75 (--quick: 0.5)")
    p.add_argument(
        "--methods",
        default=None,
        help="default geometry,random,judge,persona_projection (--quick: geometry,random)",
    )
    p.add_argument("--defenses", default="all", help="comma-separated defense names, or all")
    p.add_argument(
        "--n-eval", type=int, default=None, help="answers per domain (default: the preset's; --quick: 10)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="fine-tuning steps (default: the preset's; --quick: 20)"
    )
    p.add_argument(
        "--quick", action="store_true", help="the quick demo's tiny organism, few runs and answers"
    )
    p.add_argument(
        "--set", action="append", default=[], help="MitigateConfig override, e.g. defense.kl_beta=0.3"
    )
    p.add_argument("--root", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("mitigation_organism.json"))
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        help="also write mitigate.md and frontier.png (spillover mitigate's outputs) into this folder",
    )
    args = p.parse_args()
    q = args.quick
    args.organisms = args.organisms or ((0,) if q else (0, 1, 2))
    args.seeds = args.seeds or ((0, 1) if q else (0, 1, 2))
    args.fractions = args.fractions or ("0.5" if q else "0.1,0.25,0.5,0.75")
    args.methods = args.methods or ("geometry,random" if q else "geometry,random,judge,persona_projection")
    args.n_eval = args.n_eval if args.n_eval is not None else (10 if q else None)
    args.steps = args.steps if args.steps is not None else (20 if q else None)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from spillover.organism.pipeline import train_organism
    from spillover.studies.filtering import merge_filter_runs
    from spillover.studies.mitigate import collect_organism_runs, mitigation_summary

    cfg = build_config(args)  # every option checked before anything trains
    t0 = time.perf_counter()
    filter_runs, arm_runs = [], []
    for o in args.organisms:
        art = train_organism(replace(cfg.organism, seed=o), root=args.root)
        runs, arms = collect_organism_runs(
            art, cfg, organism=f"o{o}", root=args.root, on_run=lambda label: print(f"  {label}", flush=True)
        )
        filter_runs.append(runs)
        arm_runs.append(arms)
    summary = mitigation_summary(filter_runs, arm_runs, cfg)
    summary["geometry_vs_random"] = geometry_vs_random(cfg, merge_filter_runs(filter_runs))
    summary["organisms"] = list(args.organisms)
    summary["wall_s"] = time.perf_counter() - t0
    print_report(summary)
    args.out.write_text(
        json.dumps(summary, indent=2, default=lambda v: v.tolist() if isinstance(v, np.ndarray) else str(v))
    )
    print(f"\nwrote {args.out} ({summary['wall_s']:.0f} s)")
    if args.report is not None:
        from spillover.studies.mitigate import write_mitigation

        print("wrote " + ", ".join(str(p) for p in write_mitigation(summary, args.report)))


if __name__ == "__main__":
    main()
