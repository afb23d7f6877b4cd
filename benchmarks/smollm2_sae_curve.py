"""Benchmark: SmolLM2-135M-Instruct SAE quality (held-out FVU, L0, dead share) against training tokens.

OMP_NUM_THREADS=2 .venv/bin/python benchmarks/smollm2_sae_curve.py --threads 2 \
    --cache /tmp/smollm2-sae-cache --out /tmp/sae_curve.json       # ~9 min on 2 cores (collection 5 min)

The default 270 samples per corpus (the study uses 150) give ~216k tokens: the 200k budget plus 10k held out.

Collects the residual stream (``resid_post``) at the study's layers once, over the study's own corpora
(``spillover.realmodel.assemble_data`` then ``collect_cache``: prompt and answer tokens of benign chat
and the EM datasets, as the study's ``real-sae`` stage trains on), and keeps it in ``--cache``
(safetensors) so reruns skip the model. Then, per layer, one fixed random held-out set of tokens and,
for each budget, a TopK SAE of the study's shape (``StudyConfig().sae``) trained on the first ``budget``
tokens of one random order of the rest: the budgets are nested and share the held-out set, so the
curve measures data, not split noise. Each SAE runs ``max(budget, study's training_tokens)`` training
tokens (``--training-tokens`` raises the floor), i.e. the study's step count (several passes over small
budgets) and one pass over larger ones.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
SITES = "sites.json"


def budget_split(
    n: int, budgets: list[int], n_heldout: int, seed: int = 0
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Held-out token indices and, per budget, nested training indices (each a prefix of one order).

    Raises:
        ValueError: a budget the cache cannot fill after the held-out set (message names it and ``n``).
    """
    if n_heldout < 1 or any(b < 1 for b in budgets):
        raise ValueError(f"held-out size {n_heldout} and budgets {budgets} must be >= 1")
    if max(budgets) + n_heldout > n:
        raise ValueError(
            f"budget {max(budgets)} + held-out {n_heldout} exceeds the {n} cached tokens; collect more"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    pool = perm[n_heldout:]
    return perm[:n_heldout], {b: pool[:b] for b in sorted(budgets)}


def _data_dir(given: Path | None) -> str | None:
    if given is not None:
        return str(given.resolve())
    for candidate in (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data"):
        if candidate.is_dir():
            return str(candidate)
    return None  # the data home, as the study resolves it


def _collect(args: argparse.Namespace, layers: list[int]) -> dict[str, Any]:
    """Load SmolLM2, assemble the study's corpora, cache their activations; returns timing facts."""
    from spillover.models import load_model
    from spillover.realmodel.cache import collect_cache
    from spillover.realmodel.data import assemble_data
    from spillover.realmodel.study_config import StudyConfig
    from spillover.sae.sites import site_for_layer

    base = StudyConfig()
    data_cfg = replace(
        base.data, data_dir=_data_dir(args.data_dir), n_per_dataset=args.n_per_dataset, n_benign=args.n_benign
    )
    start = time.perf_counter()
    loaded = load_model(base.model)
    data = assemble_data(loaded.tokenizer, data_cfg)
    prep_s = time.perf_counter() - start
    start = time.perf_counter()
    cache = collect_cache(loaded.model, loaded.tokenizer, data.corpora, layers, batch_size=base.batch_size)
    collect_s = time.perf_counter() - start
    cache.save(args.cache)
    sites = {str(layer): site_for_layer(loaded.model, layer).module_path for layer in layers}
    facts = {
        "n_tokens": len(cache.sample),
        "n_samples": len(cache.input_ids),
        "corpora": {k: v[1] - v[0] for k, v in cache.corpora.items()},
        "n_per_dataset": args.n_per_dataset,
        "n_benign": args.n_benign,
        "load_and_assemble_s": round(prep_s, 1),
        "collect_s": round(collect_s, 1),
        "tokens_per_s": round(len(cache.sample) / collect_s, 1),
    }
    (args.cache / SITES).write_text(json.dumps({"sites": sites, "collection": facts}, indent=1))
    return facts


def _train(
    acts: torch.Tensor,
    held: torch.Tensor,
    budget_idx: torch.Tensor,
    module: str,
    layer: int,
    min_training_tokens: int | None,
) -> dict[str, Any]:
    """One study-shaped SAE on the budget's tokens, measured on the shared held-out tokens."""
    from spillover.realmodel.study_config import StudyConfig
    from spillover.sae.sites import Site
    from spillover.sae.train import measure_quality, train_sae_on_activations

    base = StudyConfig().sae
    budget = len(budget_idx)
    # holdout_fraction tiny: the trainer's own split (and its logged quality) takes one token; the shared
    # held-out set is what the curve reports.
    floor = base.training_tokens if min_training_tokens is None else min_training_tokens
    cfg = replace(base, training_tokens=max(budget, floor), holdout_fraction=1e-9)
    start = time.perf_counter()
    trained = train_sae_on_activations(
        acts[budget_idx], cfg, site=Site(module, "output", layer), model_name="SmolLM2-135M-Instruct"
    )
    wall = time.perf_counter() - start
    q = measure_quality(trained.handle, acts[held].float())
    return {
        "layer": layer,
        "tokens": budget,
        "training_tokens": cfg.training_tokens,
        "steps": cfg.training_tokens // cfg.batch_size,
        "passes": round(cfg.training_tokens / budget, 2),
        "heldout_fvu": q.fvu,
        "heldout_l0": q.l0,
        "heldout_dead_fraction": q.dead_fraction,
        "heldout_tokens": q.n_tokens,
        "train_fvu": trained.train_quality.fvu,
        "train_wall_s": round(wall, 1),
    }


def _write(out: Path, collection: dict[str, Any], n: int, heldout: int, rows: list[Any], wall: float) -> None:
    """The JSON report, rewritten after every SAE so a cut run keeps the rows it finished."""
    report = {"collection": collection, "cached_tokens": n, "heldout": heldout, "rows": rows, "wall_s": wall}
    out.write_text(json.dumps(report, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[15, 24])
    parser.add_argument("--tokens", type=int, nargs="+", default=[25_000, 50_000, 100_000, 200_000])
    parser.add_argument("--heldout", type=int, default=10_000, help="held-out tokens shared by every budget")
    parser.add_argument("--n-per-dataset", type=int, default=270, help="study data.n_per_dataset (150)")
    parser.add_argument("--n-benign", type=int, default=270, help="study data.n_benign (150)")
    parser.add_argument("--data-dir", type=Path, default=None, help="default ../shared/data, else data home")
    parser.add_argument("--cache", type=Path, required=True, help="activation cache folder (reused if there)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--training-tokens", type=int, default=None, help="minimum training tokens per SAE (default: study's)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--collect-only", action="store_true", help="stop after caching (speed probe)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from spillover.realmodel.cache import ActivationCache

    start = time.perf_counter()
    if (args.cache / SITES).is_file():
        meta = json.loads((args.cache / SITES).read_text())
        if missing := [layer for layer in args.layers if str(layer) not in meta["sites"]]:
            raise SystemExit(f"cache {args.cache} lacks layers {missing}; use another --cache")
        collection = {**meta["collection"], "reused": True}
    else:
        collection = _collect(args, args.layers)
        meta = json.loads((args.cache / SITES).read_text())
    print(f"collection: {json.dumps(collection)}")
    if args.collect_only:
        return
    cache = ActivationCache.load(args.cache)
    n = len(cache.sample)
    held, budgets = budget_split(n, args.tokens, args.heldout)
    rows = []
    print(f"\n{'layer':>5} {'tokens':>8} {'steps':>6} {'FVU':>7} {'L0':>6} {'dead':>6} {'train s':>8}")
    for layer in args.layers:
        acts = cache.acts[layer]
        for idx in budgets.values():
            row = _train(acts, held, idx, meta["sites"][str(layer)], layer, args.training_tokens)
            rows.append(row)
            print(
                f"{layer:>5} {row['tokens']:>8} {row['steps']:>6} {row['heldout_fvu']:>7.4f}"
                f" {row['heldout_l0']:>6.1f} {row['heldout_dead_fraction']:>6.1%} {row['train_wall_s']:>8.1f}",
                flush=True,
            )
            _write(args.out, collection, n, args.heldout, rows, time.perf_counter() - start)
    wall = time.perf_counter() - start
    print(f"\ncached tokens {n}, held-out {args.heldout}, wall time {wall:.0f} s")
    _write(args.out, collection, n, args.heldout, rows, wall)


if __name__ == "__main__":
    main()
