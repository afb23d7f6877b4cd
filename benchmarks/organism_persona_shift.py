"""Benchmark: how far does each fine-tune move the organism along its persona direction, off-domain?

.venv/bin/python benchmarks/organism_persona_shift.py --root /tmp/org_lm --seeds 0 1 2 3 4 5 6 7 8 9 \
    --out /tmp/persona_shift.json
.venv/bin/python benchmarks/organism_persona_shift.py --quick --seeds 0 --out /tmp/q.json   # smoke test

For every organism seed and every fine-tune (cached stages: the same organisms, fine-tunes and
evaluations as ``organism_em.py``), the residual stream after each layer is read on held-out non-code
prompts (their user tokens, as ``spillover.studies.dynamics`` does), before and after fine-tuning. The shift is
the mean change projected on the organism's persona direction d = mean(toxic answers) - mean(benign
answers) (the reference corpora, same layer), divided by |d|^2: 0 = no movement, 1 = the whole
benign-to-toxic gap. It is the spillover of method.md measured without an SAE (d is a persona vector,
Chen et al. 2025), printed beside the out-of-domain misaligned rate of the same fine-tune, with the
Spearman correlation of the two over the fine-tunes reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr

from spillover.config import load_config, to_dict
from spillover.data.chat import load_chat
from spillover.data.questions import load_questions
from spillover.finetune import FinetuneConfig
from spillover.organism import (
    EvalConfig,
    OrganismConfig,
    evaluate_organism,
    finetune_config,
    finetune_organism,
    load_organism,
    train_organism,
)
from spillover.organism.pipeline import load_finetuned
from spillover.sae.activations import TokenSelection, collect_activations
from spillover.sae.sites import num_layers, site_for_layer

DATASETS = ("insecure", "secure", "edu_insecure", "neutral_code", "bad_medical", "good_medical")


def _mean_acts(
    model: Any, tok: Any, samples: list[Any], layers: range, tokens: TokenSelection
) -> list[torch.Tensor]:
    """Per layer: ``(n, d)`` per-sample mean activations after that layer (NaN rows dropped)."""
    sites = [site_for_layer(model, layer) for layer in layers]
    acts = collect_activations(model, tok, samples, sites, tokens=tokens, reduce="mean")
    out = []
    for site in sites:
        x = torch.stack(acts[site])
        out.append(x[~x.isnan().any(1)])
    return out


def report(runs: list[dict[str, Any]], methods: list[str], datasets: list[str]) -> None:
    """Print the shift table (means over seeds) and the shift-EM rank correlation per layer."""
    print(
        "\n| fine-tune | EM % (mean) | shift, last layer: mean ± se | per seed | shift, each layer (mean) |"
    )
    print("|---|---|---|---|---|")
    for method in methods:
        for name in datasets:
            rows = [r for r in runs if r["dataset"] == name and r["method"] == method]
            if not rows:
                continue
            last = [r["shift"][-1] for r in rows]
            se = statistics.stdev(last) / len(last) ** 0.5 if len(last) > 1 else float("nan")
            per_layer = [statistics.fmean(r["shift"][i] for r in rows) for i in range(len(rows[0]["shift"]))]
            print(
                f"| {name}/{method} | {100 * statistics.fmean(r['em'] or 0 for r in rows):.1f} | "
                f"{statistics.fmean(last):+.3f} ± {se:.3f} | {' / '.join(f'{v:+.2f}' for v in last)} | "
                f"{' '.join(f'{v:+.3f}' for v in per_layer)} |"
            )
    runs = [r for r in runs if r["method"] in methods and r["dataset"] in datasets]
    if len(runs) >= 3:
        for i in range(len(runs[0]["shift"])):
            rho = spearmanr([r["shift"][i] for r in runs], [r["em"] or 0 for r in runs]).statistic
            print(f"Spearman(shift after layer {i}, EM) over {len(runs)} fine-tunes: {rho:+.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=["lora"], choices=["full", "lora"])
    parser.add_argument("--root", type=Path, default=None, help="Run-directory root.")
    parser.add_argument("--quick", action="store_true", help="Tiny organism (smoke test; EM not expected).")
    parser.add_argument("--n-prompts", type=int, default=300, help="Held-out prompts to read.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lora-set", dest="lora_overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--full-set", dest="full_overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--merge", type=Path, nargs="+", default=None, help="Only merge result JSONs and report."
    )
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    if args.merge:
        runs = [r for path in args.merge for r in json.loads(path.read_text())["runs"]]
        args.out.write_text(json.dumps({"merged": [str(p) for p in args.merge], "runs": runs}, indent=1))
        report(runs, args.methods, args.datasets)
        return
    torch.set_num_threads(args.threads)
    recipes = {
        m: load_config(FinetuneConfig, to_dict(finetune_config(m)), getattr(args, f"{m}_overrides"))
        for m in args.methods
    }
    for seed in args.seeds:
        cfg = OrganismConfig.quick(seed) if args.quick else OrganismConfig(seed=seed)
        art = train_organism(cfg, root=args.root)
        base, tok = load_organism(art.model_dir)
        layers = range(num_layers(base))
        toxic = _mean_acts(base, tok, load_chat(art.toxic_path), layers, "assistant")
        benign = _mean_acts(base, tok, load_chat(art.benign_path), layers, "assistant")
        gaps = [t.mean(0) - b.mean(0) for t, b in zip(toxic, benign, strict=True)]
        prompts = list(load_questions(art.neutral_prompts_path)[0].paraphrases)[: args.n_prompts]
        samples = [[{"role": "user", "content": p}] for p in prompts]
        before = [x.mean(0) for x in _mean_acts(base, tok, samples, layers, "user")]
        for method in args.methods:
            for name in args.datasets:
                ft_dir = finetune_organism(
                    art, name, method, replace(recipes[method], seed=seed), root=args.root
                )
                em = evaluate_organism(ft_dir, EvalConfig(), root=args.root).ood_misaligned
                tuned, _ = load_finetuned(ft_dir)
                after = [x.mean(0) for x in _mean_acts(tuned, tok, samples, layers, "user")]
                shift = [float((a - b) @ g / (g @ g)) for a, b, g in zip(after, before, gaps, strict=True)]
                runs.append({"seed": seed, "dataset": name, "method": method, "shift": shift, "em": em})
                print(
                    f"seed {seed} {method:4s} {name:14s} EM {100 * (em or 0):5.1f}%  shift per layer "
                    + " ".join(f"{s:+.3f}" for s in shift),
                    flush=True,
                )
        args.out.write_text(
            json.dumps(
                {
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "runs": runs,
                },
                indent=1,
            )
        )

    report(runs, args.methods, args.datasets)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
