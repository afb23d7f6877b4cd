"""Benchmark: does feature geometry predict the organism's EM? Seeds x layers x SAE width/sparsity.

.venv/bin/python benchmarks/geometry_organism.py --root /tmp/org/runs --em /tmp/org/bench/full_s0.json \\
    --em /tmp/org/bench/full_s1.json --em /tmp/org/bench/full_s2.json --out /tmp/geometry_organism.json
.venv/bin/python benchmarks/geometry_organism.py --seeds 0 --quick --out /tmp/q.json        # smoke test

For every seed it trains (or reuses) the organism, trains (or reuses) one TopK SAE per layer at the base
width/sparsity, and runs ``geometry_report`` on the organism's datasets (inducing: insecure,
bad_medical, risky_finance; controls: secure, edu_insecure, good_medical, safe_finance; also neutral
and grey code). Then at the middle layer it sweeps SAE width and k. It prints:

* SAE quality (held-out FVU, L0, dead fraction) for every SAE;
* per layer, the inducing-vs-control comparison pooled over seeds (feature-level permutation test
  stratified by seed, Mann-Whitney U, and paired sign-flip tests of SAE proximity, nearest-toxic
  cosine, mean-difference cosine and toxic-latent activation over (seed, pair));
* Spearman correlations of each measure (and the risk score) with the measured OOD misalignment rates
  of the organism benchmark (``benchmarks/organism_em.py`` JSON, ``--em``), per seed and pooled;
* the stability of the SAE measures across widths and sparsities.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr

from spillover.geometry.compare import pooled_comparison
from spillover.geometry.report import GeometryConfig, geometry_report
from spillover.organism import OrganismArtifacts, OrganismConfig, load_organism, train_organism
from spillover.organism.inputs import OrganismSAEConfig, organism_inputs, train_organism_saes
from spillover.sae.load import load_saes
from spillover.sae.train import SAETrainConfig

MEASURES = ("mean_diff", "sae_proximity_excess", "mean_max", "toxic_activation")


def _measure(entry: dict[str, Any], name: str) -> float:
    if name == "mean_diff":
        return entry["mean_diff"]
    if name == "toxic_activation":
        return entry["toxic_activation"]
    if name == "mean_max":
        return entry["geometry"]["mean_max"] if entry["geometry"]["mean_max"] is not None else math.nan
    return entry["geometry"]["proximity"] - entry["null"]["mean_max"]["null_mean"]


def _em_rates(paths: list[Path], method: str) -> dict[int, dict[str, float]]:
    rates: dict[int, dict[str, float]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        for seed, res in data.get("seeds", {}).items():
            for key, row in res.get("runs", {}).items():
                name, _, m = key.partition("/")
                if m == method and row.get("ood_misaligned") is not None:
                    rates.setdefault(int(seed), {})[name] = 100 * row["ood_misaligned"]
    return rates


def _auroc(positive: list[float], negative: list[float]) -> float:
    """P(a positive scores above a negative), ties counting half."""
    pairs = [(p > q) + 0.5 * (p == q) for p in positive for q in negative]
    return statistics.fmean(pairs) if pairs else math.nan


def _spearman(x: list[float], y: list[float]) -> float:
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if not (math.isnan(a) or math.isnan(b))]
    if len(pairs) < 3:
        return math.nan
    return float(spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic)


def _sae_quality(folder: Path) -> dict[str, dict[str, float]]:
    return {
        child.parent.name: json.loads(child.read_text())["heldout"]
        for child in sorted(folder.glob("layer_*/training.json"))
    }


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--root", type=Path, default=None, help="run root (share it with the organism benchmark)"
    )
    parser.add_argument(
        "--em", type=Path, action="append", default=[], help="organism_em.py JSON (repeatable)"
    )
    parser.add_argument("--em-method", default="full")
    parser.add_argument("--width", type=int, default=1024, help="base SAE width")
    parser.add_argument("--k", type=int, default=16, help="base SAE k (L0)")
    parser.add_argument("--sweep-widths", default="512,2048")
    parser.add_argument("--sweep-ks", default="8,32")
    parser.add_argument("--training-tokens", type=int, default=2_000_000)
    parser.add_argument("--toxic-domains", default="ood", choices=("ood", "all"))
    parser.add_argument(
        "--organism",
        action="append",
        default=[],
        help="SEED=RUN_DIR,DATA_DIR: use an existing organism (e.g. the exact models the EM JSON was measured on)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny organism and SAEs (smoke test)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def _seed(
    args: argparse.Namespace,
    seed: int,
    given: dict[int, tuple[Path, Path]],
    gcfg: GeometryConfig,
    reports: dict[int, dict[str, Any]],
    sweep_reports: dict[str, dict[int, dict[str, Any]]],
    t_start: float,
) -> dict[str, Any]:
    """One seed: its organism, the base SAEs and the width/k sweep at the middle layer; fills the reports."""
    tokens = 200_000 if args.quick else args.training_tokens
    n_docs = 800 if args.quick else 6000
    ocfg = OrganismConfig.quick(seed) if args.quick else OrganismConfig(seed=seed)
    if seed in given:
        run_dir, data_dir = given[seed]
        art = OrganismArtifacts(run_dir, run_dir / "model", run_dir / "pretrained", data_dir, ocfg)
    else:
        art = train_organism(ocfg, root=args.root)
    model, tok = load_organism(art)
    inputs = organism_inputs(art, toxic_domains=args.toxic_domains)  # type: ignore[arg-type]
    n_layers = model.config.num_hidden_layers
    mid = n_layers // 2

    def sae_dir(d: int, k: int, layers: tuple[int, ...] = (), seed: int = seed, art: Any = art) -> Path:
        cfg = OrganismSAEConfig(
            layers=layers,
            sae=SAETrainConfig(d_sae=d, k=k, training_tokens=tokens, seed=seed),
            n_documents=n_docs,
        )
        return train_organism_saes(art, cfg, root=args.root)

    def report(
        folder: Path, layers: list[int] | None, inputs: Any = inputs, model: Any = model, tok: Any = tok
    ) -> dict[str, Any]:
        saes = load_saes(str(folder), model, layers)
        return geometry_report(
            model,
            tok,
            saes,
            inputs.datasets,
            toxic=inputs.toxic,
            benign=inputs.benign,
            reference=inputs.reference,
            roles=inputs.roles,
            pairs=inputs.pairs,
            cfg=gcfg,  # type: ignore[arg-type]
        ).report

    t0 = time.perf_counter()
    base = sae_dir(args.width, args.k)
    t_sae = time.perf_counter() - t0
    reports[seed] = report(base, None)
    seed_out: dict[str, Any] = {
        "organism_run": str(art.run_dir),
        "organism_data": str(art.data_dir),
        "sae_quality": {f"d{args.width}_k{args.k}": _sae_quality(base)},
        "sae_train_s": t_sae,
        "geometry_s": time.perf_counter() - t0 - t_sae,
    }
    sweep = [(d, args.k) for d in map(int, args.sweep_widths.split(","))] + [
        (args.width, k) for k in map(int, args.sweep_ks.split(","))
    ]
    for d, k in sweep:
        folder = sae_dir(d, k, (mid,))
        name = f"d{d}_k{k}"
        seed_out["sae_quality"][name] = _sae_quality(folder)
        sweep_reports.setdefault(name, {})[seed] = report(folder, [mid])
    sweep_reports.setdefault(f"d{args.width}_k{args.k}", {})[seed] = reports[seed]
    print(
        f"seed {seed}: SAEs {t_sae:.0f}s, geometry {seed_out['geometry_s']:.0f}s, elapsed {time.perf_counter() - t_start:.0f}s",
        flush=True,
    )
    return seed_out


def _print_sae_quality(seeds: list[int], per_seed: dict[str, Any]) -> None:
    print("\n## SAE quality (held-out): FVU / L0 / dead %")
    for seed in seeds:
        for cfg_name, per_layer in per_seed[str(seed)]["sae_quality"].items():
            cells = ", ".join(
                f"{k}: {q['fvu']:.3f} / {q['l0']:.1f} / {100 * q['dead_fraction']:.1f}"
                for k, q in per_layer.items()
            )
            print(f"seed {seed} {cfg_name}: {cells}")


def _dataset_table(
    reports: dict[int, dict[str, Any]], seeds: list[int], em: dict[int, dict[str, float]]
) -> dict[str, Any]:
    layers = list(reports[seeds[0]]["layers"])
    names = list(reports[seeds[0]]["datasets"])
    print("\n## Per-dataset measures (mean over seeds) at each layer")
    table: dict[str, Any] = {}
    for key in layers:
        print(f"\n{key}: dataset | role | " + " | ".join(MEASURES) + " | shared | EM %")
        for name in names:
            vals = {
                m: statistics.fmean(_measure(reports[s]["layers"][key]["datasets"][name], m) for s in seeds)
                for m in MEASURES
            }
            shared = statistics.fmean(
                reports[s]["layers"][key]["datasets"][name]["geometry"]["n_shared"] for s in seeds
            )
            ems = [em[s][name] for s in seeds if s in em and name in em[s]]
            em_m = statistics.fmean(ems) if ems else math.nan
            table.setdefault(key, {})[name] = {**vals, "n_shared": shared, "em": em_m}
            role = reports[seeds[0]]["datasets"][name]["role"]
            print(
                f"  {name:14s} {role:9s} "
                + " ".join(f"{vals[m]:8.3f}" for m in MEASURES)
                + f"  {shared:5.1f}  {em_m:6.1f}"
            )
    return table


def _pooled(reports: dict[int, dict[str, Any]], seeds: list[int], gcfg: GeometryConfig) -> dict[str, Any]:
    layers = list(reports[seeds[0]]["layers"])
    print("\n## Inducing vs control, pooled over seeds (one-sided: inducing closer)")
    pooled: dict[str, Any] = {}
    for key in layers:
        pc = pooled_comparison([reports[s] for s in seeds], key, n_permutations=gcfg.n_permutations)
        pooled[key] = pc
        fl = pc["feature_level"]
        print(
            f"{key}: nearest-toxic cosine inducing {fl['mean_inducing']:.3f} vs control {fl['mean_control']:.3f}: "
            f"permutation p={fl['permutation']['p_value']:.4f}, Mann-Whitney p={fl['mann_whitney']['p_value']:.4f}"
        )
        for metric, res in pc["paired"].items():
            d = res["differences"]
            print(
                f"    paired {metric:16s} mean diff {statistics.fmean(d):+.4f}, {sum(v > 0 for v in d)}/{len(d)} positive, sign-flip p={res['test']['p_value']:.4f}"
            )
    return pooled


def _correlations(
    args: argparse.Namespace,
    reports: dict[int, dict[str, Any]],
    seeds: list[int],
    em: dict[int, dict[str, float]],
    table: dict[str, Any],
) -> dict[str, Any]:
    layers = list(reports[seeds[0]]["layers"])
    mid_key = f"layer_{len(layers) // 2}"
    names = list(reports[seeds[0]]["datasets"])
    print(f"\n## Spearman with measured EM ({args.em_method} fine-tuning)")
    correlations: dict[str, Any] = {}
    if not em:
        print("no EM rates given (--em): geometry numbers only")
    else:
        for key in layers:
            for m in MEASURES:
                per_seed = []
                xs: list[float] = []
                ys: list[float] = []
                for s in seeds:
                    if s not in em:
                        continue
                    common = [n for n in names if n in em[s]]
                    x = [_measure(reports[s]["layers"][key]["datasets"][n], m) for n in common]
                    y = [em[s][n] for n in common]
                    per_seed.append(_spearman(x, y))
                    xs += x
                    ys += y
                mean_x = [table[key][n][m] for n in names if not math.isnan(table[key][n]["em"])]
                mean_y = [table[key][n]["em"] for n in names if not math.isnan(table[key][n]["em"])]
                correlations[f"{key}/{m}"] = {
                    "per_seed": per_seed,
                    "pooled": _spearman(xs, ys),
                    "seed_means": _spearman(mean_x, mean_y),
                    "n_datasets": len(mean_x),
                }
                print(
                    f"{key} {m:22s} per seed {' / '.join(f'{v:.2f}' for v in per_seed)}; "
                    f"pooled {correlations[f'{key}/{m}']['pooled']:.2f}; seed means {correlations[f'{key}/{m}']['seed_means']:.2f}"
                )
        risk_x = [
            statistics.fmean(reports[s]["risk"]["scores"][n] for s in seeds)
            for n in names
            if not math.isnan(table[mid_key][n]["em"])
        ]
        correlations["risk"] = _spearman(
            risk_x, [table[mid_key][n]["em"] for n in names if not math.isnan(table[mid_key][n]["em"])]
        )
        print(
            f"risk score ({reports[seeds[0]]['risk']['measure']} at {reports[seeds[0]]['risk']['layers']}) vs EM, seed means: {correlations['risk']:.2f}"
        )
        # Spearman over 8 datasets is dominated by the controls' order when their EM rates are all near
        # zero; the AUROC asks only whether every inducing dataset scores above every control.
        roles = {n: reports[seeds[0]]["datasets"][n]["role"] for n in names}
        correlations["risk_auroc"] = [
            _auroc(
                [reports[s]["risk"]["scores"][n] for n in names if roles[n] == "inducing"],
                [reports[s]["risk"]["scores"][n] for n in names if roles[n] == "control"],
            )
            for s in seeds
        ]
        print(
            "risk score, inducing vs control datasets: AUROC per seed "
            + " / ".join(f"{v:.2f}" for v in correlations["risk_auroc"])
        )
    return correlations


def _sweep_stability(
    sweep_reports: dict[str, dict[int, dict[str, Any]]],
    reports: dict[int, dict[str, Any]],
    seeds: list[int],
    em: dict[int, dict[str, float]],
    table: dict[str, Any],
    gcfg: GeometryConfig,
) -> dict[str, Any]:
    layers = list(reports[seeds[0]]["layers"])
    mid_key = f"layer_{len(layers) // 2}"
    names = list(reports[seeds[0]]["datasets"])
    print(f"\n## SAE width / sparsity sweep at {mid_key} (means over seeds)")
    stability: dict[str, Any] = {}
    order_ref = None
    for cfg_name, by_seed in sorted(sweep_reports.items()):
        pc = pooled_comparison([by_seed[s] for s in seeds], mid_key, n_permutations=gcfg.n_permutations)
        prox = {
            n: statistics.fmean(
                _measure(by_seed[s]["layers"][mid_key]["datasets"][n], "sae_proximity_excess") for s in seeds
            )
            for n in names
        }
        if order_ref is None:
            order_ref = prox
        entry = {
            "feature_level_p": pc["feature_level"]["permutation"]["p_value"],
            "paired_proximity_p": pc["paired"]["proximity"]["test"]["p_value"],
            "paired_proximity_positive": sum(v > 0 for v in pc["paired"]["proximity"]["differences"]),
            "n_pairs": len(pc["paired"]["proximity"]["differences"]),
            "proximity_excess": prox,
            "rank_agreement_with_first": _spearman([order_ref[n] for n in names], [prox[n] for n in names]),
        }
        if em:
            ems = [table[mid_key][n]["em"] for n in names]
            entry["spearman_em"] = _spearman([prox[n] for n in names], ems)
        stability[cfg_name] = entry
        print(
            f"{cfg_name:12s} feature-level p={entry['feature_level_p']:.4f}  paired proximity p={entry['paired_proximity_p']:.4f} "
            f"({entry['paired_proximity_positive']}/{entry['n_pairs']} positive)  rank agreement {entry['rank_agreement_with_first']:.2f}"
            + (f"  Spearman vs EM {entry['spearman_em']:.2f}" if em else "")
        )
    return stability


def main() -> None:
    args = _parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    given: dict[int, tuple[Path, Path]] = {}
    for item in args.organism:
        seed_text, _, dirs = item.partition("=")
        run_text, _, data_text = dirs.partition(",")
        given[int(seed_text)] = (Path(run_text), Path(data_text))
    em = _em_rates(args.em, args.em_method)
    gcfg = GeometryConfig()
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "seeds": {}}
    reports: dict[int, dict[str, Any]] = {}
    sweep_reports: dict[str, dict[int, dict[str, Any]]] = {}
    t_start = time.perf_counter()
    for seed in seeds:
        results["seeds"][str(seed)] = _seed(args, seed, given, gcfg, reports, sweep_reports, t_start)
    _print_sae_quality(seeds, results["seeds"])
    results["table"] = _dataset_table(reports, seeds, em)
    results["pooled"] = _pooled(reports, seeds, gcfg)
    results["correlations"] = _correlations(args, reports, seeds, em, results["table"])
    results["sweep"] = _sweep_stability(sweep_reports, reports, seeds, em, results["table"], gcfg)
    results["reports"] = {str(s): reports[s] for s in seeds}
    results["wall_s"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {args.out} ({results['wall_s']:.0f}s)")


if __name__ == "__main__":
    main()
