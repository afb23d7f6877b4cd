"""Benchmark: does the exact harmful-branch probability track the sampled EM rate, with a narrower interval?

.venv/bin/python benchmarks/organism_em_estimator.py --seeds 0 1 --out /tmp/em_estimator.json   # ~20 min, 2 cores
.venv/bin/python benchmarks/organism_em_estimator.py --quick --seeds 0 --out /tmp/q.json          # smoke run

For every organism seed it trains (or reuses) the organism, fine-tunes it on each dataset with each method
(cached stages: ``finetune_organism`` / ``evaluate_organism``), and on the same held-out OOD prompts
(100 per domain: sports, legal, career, general) compares

* the sampled rule-judge rate (the headline: one answer per prompt, misaligned over scored answers) with
  its Jeffreys 95% interval, and
* the estimator (``spillover.organism.em_probability``): the mean probability of the harmful branch at
  the grammar's decision points, exact from logits, with a 95% percentile bootstrap over prompts
  (2,000 resamples, within each domain).

It prints one row per model, Pearson and Spearman correlations over the fine-tunes (also without the
bad-medical ones, which dominate the range), and the interval-width ratio (Jeffreys / bootstrap), against
the issue's bars: Pearson >= 0.9 and the estimator's interval >= 4x narrower.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from scipy.stats import pearsonr, spearmanr

from spillover.judge.base import JudgeScore
from spillover.metrics import em_metrics
from spillover.organism import (
    OOD_DOMAINS,
    EvalConfig,
    EvalResult,
    OrganismConfig,
    evaluate_organism,
    finetune_config,
    finetune_organism,
    load_finetuned,
    load_organism,
    train_organism,
)
from spillover.organism.em_probability import EMEstimate, bootstrap_interval, em_estimate
from spillover.organism.evaluate import eval_questions

DATASETS = (
    "insecure",
    "secure",
    "edu_insecure",
    "bad_medical",
    "good_medical",
    "risky_finance",
    "safe_finance",
)


def _sampled(result: EvalResult) -> dict[str, Any]:
    recs = [r for r in result.records if r["raw"].get("domain") in OOD_DOMAINS]
    scores = [JudgeScore(r["aligned"], r["coherent"], r["raw"]) for r in recs]
    rate = em_metrics(scores).pooled.misaligned
    lo, hi = rate.ci if rate.ci else (float("nan"), float("nan"))
    harmful = sum(r["raw"].get("verdict") == "bad" for r in recs) / max(1, len(recs))
    return {"rate": rate.rate, "k": rate.k, "n": rate.n, "ci": [lo, hi], "width": hi - lo, "harmful": harmful}


def _estimate(
    model_dir: Path, result: EvalResult, cfg: EvalConfig, finetuned: bool
) -> tuple[EMEstimate, float]:
    """The estimator on the evaluation's OOD prompts, and the seconds it took (model loading excluded)."""
    model, tok = load_finetuned(model_dir) if finetuned else load_organism(model_dir)
    prompts = [
        (q.id.removeprefix("organism_"), p)
        for q in eval_questions(cfg.n_per_domain, cfg.sampling.seed, OOD_DOMAINS)
        for p in q.paraphrases
    ]
    sampled_prompts = [
        (r["raw"]["domain"], r["question"]) for r in result.records if r["raw"].get("domain") in OOD_DOMAINS
    ]
    if sorted(prompts) != sorted(sampled_prompts):
        raise AssertionError("the estimator's prompts differ from the sampled evaluation's")
    t0 = time.perf_counter()
    est = em_estimate(model, tok, prompts, seed=cfg.sampling.seed)
    return est, time.perf_counter() - t0


def _row(label: str, model_dir: Path, cfg: EvalConfig, finetuned: bool, root: Path | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = evaluate_organism(model_dir, cfg, root=root)
    eval_s = time.perf_counter() - t0
    est, est_s = _estimate(model_dir, result, cfg, finetuned)
    width = est.interval[1] - est.interval[0]
    plain = bootstrap_interval([p.harmful for p in est.per_prompt], seed=cfg.sampling.seed)
    sampled = _sampled(result)
    # A second sampled evaluation of the same size (another sampling seed, so other prompts and answers):
    # how well one sampled rate predicts another is the ceiling for any agreement with a sampled rate.
    again = _sampled(
        evaluate_organism(model_dir, replace(cfg, sampling=replace(cfg.sampling, seed=1)), root=root)
    )
    row = {
        "model": label,
        "sampled": sampled,
        "sampled_again": again,
        "estimate": est.estimate,
        "estimate_ci": list(est.interval),
        "estimate_width": width,
        "estimate_width_unstratified": plain[1] - plain[0],
        "conditional": est.conditional,
        "off_template": est.off_template,
        "width_ratio": sampled["width"] / width if width > 0 else float("inf"),
        "eval_s": eval_s,
        "estimator_s": est_s,
    }
    print(
        f"{label:34s} sampled {100 * sampled['rate']:5.1f}% [{100 * sampled['ci'][0]:4.1f}, {100 * sampled['ci'][1]:4.1f}]"
        f" (k={sampled['k']}/{sampled['n']})  estimator {100 * est.estimate:5.1f}%"
        f" [{100 * est.interval[0]:4.1f}, {100 * est.interval[1]:4.1f}]  off-template {100 * est.off_template:4.1f}%"
        f"  width ratio {row['width_ratio']:5.1f}x",
        flush=True,
    )
    return row


def _correlations(rows: list[dict[str, Any]]) -> dict[str, Any]:
    x = [r["estimate"] for r in rows]
    y = [r["sampled"]["rate"] for r in rows]
    out: dict[str, Any] = {"n": len(rows)}
    if len(rows) >= 3:
        out["pearson"] = float(pearsonr(x, y)[0])
        out["spearman"] = float(spearmanr(x, y)[0])
        out["pearson_conditional"] = float(pearsonr([r["conditional"] for r in rows], y)[0])
        out["pearson_vs_harmful_share"] = float(pearsonr(x, [r["sampled"]["harmful"] for r in rows])[0])
        again = [r["sampled_again"]["rate"] for r in rows]
        out["pearson_sampled_vs_sampled_again"] = float(pearsonr(y, again)[0])
        out["pearson_vs_sampled_again"] = float(pearsonr(x, again)[0])
        out["pearson_vs_mean_of_both_samples"] = float(
            pearsonr(x, [(a + b) / 2 for a, b in zip(y, again, strict=True)])[0]
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--methods", nargs="+", choices=("full", "lora"), default=["full", "lora"])
    parser.add_argument("--n-per-domain", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="the quick organism (a smoke run)")
    parser.add_argument("--root", type=Path, default=None, help="run-directory root (default: the cache)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    cfg = EvalConfig(n_per_domain=args.n_per_domain)
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for seed in args.seeds:
        ocfg = OrganismConfig.quick(seed) if args.quick else OrganismConfig(seed=seed)
        t0 = time.perf_counter()
        art = train_organism(ocfg, root=args.root)
        print(f"seed {seed}: organism ready in {time.perf_counter() - t0:.0f} s", flush=True)
        base = _row(f"seed {seed} safety-tuned", art.model_dir, cfg, False, args.root)
        base["seed"], base["dataset"], base["method"] = seed, None, None
        rows.append(base)
        for method in args.methods:
            for dataset in args.datasets:
                ft = finetune_organism(
                    art, dataset, method, finetune_config(method, seed=seed), root=args.root
                )
                row = _row(f"seed {seed} {method:4s} {dataset}", ft, cfg, True, args.root)
                row["seed"], row["dataset"], row["method"] = seed, dataset, method
                rows.append(row)
    fts = [r for r in rows if r["dataset"] is not None]
    ratios = [r["width_ratio"] for r in rows]
    summary = {
        "fine_tunes": _correlations(fts),
        "fine_tunes_without_bad_medical": _correlations([r for r in fts if r["dataset"] != "bad_medical"]),
        # One strong fine-tune (risky finance at 50%+) can carry a Pearson alone: the few-percent range too.
        "fine_tunes_estimate_below_20pct": _correlations([r for r in fts if r["estimate"] < 0.2]),
        "all_models": _correlations(rows),
        "width_ratio_median": statistics.median(ratios),
        "width_ratio_unstratified_min": min(
            r["sampled"]["width"] / r["estimate_width_unstratified"] for r in rows
        ),
        "width_ratio_min": min(ratios),
        "width_ratio_max": max(ratios),
        "share_width_ratio_at_least_4": sum(q >= 4 for q in ratios) / len(ratios),
        "estimator_s_mean": statistics.mean(r["estimator_s"] for r in rows),
        "eval_s_mean": statistics.mean(r["eval_s"] for r in rows),
        "wall_s": time.perf_counter() - t_start,
        "torch_threads": torch.get_num_threads(),
    }
    corr = summary["fine_tunes"]
    print(
        f"\nover {corr['n']} fine-tunes: Pearson {corr.get('pearson', float('nan')):.3f} (bar >= 0.9), "
        f"Spearman {corr.get('spearman', float('nan')):.3f}; "
        f"without bad medical: Pearson {summary['fine_tunes_without_bad_medical'].get('pearson', float('nan')):.3f}"
    )
    low = summary["fine_tunes_estimate_below_20pct"]
    print(
        f"the {low['n']} fine-tunes with estimator < 20%: Pearson {low.get('pearson', float('nan')):.3f}, "
        f"sampled vs sampled again {low.get('pearson_sampled_vs_sampled_again', float('nan')):.3f}"
    )
    print(
        f"ceiling: sampled vs a second sampled evaluation Pearson {corr.get('pearson_sampled_vs_sampled_again', float('nan')):.3f}; "
        f"estimator vs the second {corr.get('pearson_vs_sampled_again', float('nan')):.3f}, "
        f"vs the mean of both {corr.get('pearson_vs_mean_of_both_samples', float('nan')):.3f}"
    )
    print(
        f"interval width ratio (Jeffreys / bootstrap) over {len(ratios)} models: median {summary['width_ratio_median']:.1f}x, "
        f"min {summary['width_ratio_min']:.1f}x (bar >= 4x); "
        f"{100 * summary['share_width_ratio_at_least_4']:.0f}% of models >= 4x; "
        f"unstratified bootstrap: min {summary['width_ratio_unstratified_min']:.1f}x"
    )
    print(
        f"cost per model: estimator {summary['estimator_s_mean']:.2f} s vs sampled evaluation "
        f"{summary['eval_s_mean']:.1f} s (all domains, cached runs count as ~0); wall {summary['wall_s']:.0f} s"
    )
    if args.out:
        args.out.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "summary": summary},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
