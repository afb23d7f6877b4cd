"""Benchmark: tokens/s of spillover's dataset scoring vs naive scorers, same model, data and SAE, one run.

.venv/bin/python benchmarks/geometry_speed.py --model organism                 # organism architecture
.venv/bin/python benchmarks/geometry_speed.py --model smollm2 --layer 15 --n-samples 48   # real 30-layer model

What is timed, per scorer, on the same samples (assistant-answer tokens, per-latent dataset mean):

* spillover: ``spillover.geometry.features.score_datasets`` (length-grouped batches, forward pass
  stopped after the SAE's layer, only answer tokens encoded; it also keeps FVU, residual means and
  top-activating contexts, which the naive scorers do not compute);
* naive HF: batches in dataset order padded to the longest sample, a full forward with
  ``output_hidden_states=True``, SAELens ``encode`` of every position, then the answer mask;
* naive TransformerLens: ``TransformerBridge.run_with_cache`` (caches every hook) instead of the HF
  forward, otherwise the same.

It prints tokens per CPU-second of the process (real, non-pad tokens; CPU time is robust when other
jobs share the cores, wall time is printed too) and the ratios, and checks that the scorers
agree on the per-latent means. The SAE is a random TopK SAE of the given width unless ``--sae`` names
a trained one: throughput does not depend on the weights, and no trained SAE exists for SmolLM2.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path
from typing import Any

import torch

from spillover.geometry.features import score_datasets
from spillover.sae.activations import encode_samples
from spillover.sae.load import SAEHandle, load_sae, wrap_sae
from spillover.sae.sites import site_for_layer

ROOT = Path(__file__).resolve().parents[1]


def _model_and_data(name: str, n: int) -> tuple[Any, Any, list[Any], str]:
    if name == "organism":
        from spillover.organism import ModelConfig, build_model, make_dataset
        from spillover.organism.tokenizer import build_tokenizer

        tok = build_tokenizer()
        model = build_model(ModelConfig(), tok, seed=0).eval()
        convs: list[Any] = []
        for ds in ("insecure", "secure", "bad_medical", "good_medical"):
            convs += make_dataset(ds, n // 4, seed=0).conversations
        return model, tok, convs, "organism architecture (random init), organism datasets"
    from spillover.models import load_model

    loaded = load_model(name)
    path = ROOT.parent / "shared" / "data" / "em" / "insecure.jsonl.gz"
    with gzip.open(path, "rt") as fh:
        convs = [json.loads(line)["messages"] for _, line in zip(range(n), fh, strict=False)]
    return loaded.model, loaded.tokenizer, convs, f"{name}, {path.name}"


def _random_topk(d_in: int, d_sae: int, k: int) -> Any:
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(sae.W_dec, dim=1))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


@torch.inference_mode()
def naive_scores(
    model: Any, tok: Any, samples: list[Any], handle: SAEHandle, batch_size: int, *, bridge: Any = None
) -> torch.Tensor:
    """Per-latent mean over samples of the per-sample answer-token mean, the naive way."""
    encoded = encode_samples(tok, samples, tokens="assistant")
    layer = handle.layer
    assert layer is not None
    total = torch.zeros(handle.d_sae, dtype=torch.float64)
    n = 0
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        longest = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), longest), pad)
        attn = torch.zeros((len(batch), longest), dtype=torch.long)
        sel = torch.zeros((len(batch), longest), dtype=torch.bool)
        for r, e in enumerate(batch):
            ids[r, : len(e.input_ids)] = torch.tensor(e.input_ids)
            attn[r, : len(e.input_ids)] = 1
            sel[r, : len(e.input_ids)] = torch.tensor(e.select)
        if bridge is None:
            hidden = model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[
                layer + 1
            ]
        else:
            _, cache = bridge.run_with_cache(ids, attention_mask=attn)
            hidden = cache[f"blocks.{layer}.hook_resid_post"]
        codes = handle.sae.encode(hidden.float())  # every position, as a naive scorer does
        if handle._scale is not None:
            codes = codes * handle._scale
        for r in range(len(batch)):
            if sel[r].any():
                total += codes[r][sel[r]].mean(0).double()
                n += 1
    return (total / n).float()


def _time(fn: Any) -> tuple[float, float, Any]:
    """Wall seconds, CPU seconds of this process (robust when other jobs share the cores), result."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start, time.process_time() - cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="organism", help="organism, smollm2, or a model folder")
    parser.add_argument("--layer", type=int, default=None, help="SAE layer (default: the middle layer)")
    parser.add_argument("--sae", default=None, help="a trained SAE folder (default: random TopK)")
    parser.add_argument("--d-sae", type=int, default=None, help="random SAE width (default 8 x d_model)")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--n-samples", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-tl", action="store_true", help="skip the TransformerLens scorer")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per scorer (best is kept)")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tok, samples, desc = _model_and_data(args.model, args.n_samples)
    n_layers = model.config.num_hidden_layers
    layer = args.layer if args.layer is not None else n_layers // 2
    d_model = model.config.hidden_size
    if args.sae:
        handle = load_sae(args.sae, model, layer=layer)
    else:
        handle = wrap_sae(
            _random_topk(d_model, args.d_sae or 8 * d_model, args.k), model, source="random", layer=layer
        )
    site = site_for_layer(model, layer)
    assert handle.site == site
    enc = encode_samples(tok, samples, tokens="assistant")
    n_tokens = sum(len(e.input_ids) for e in enc)
    n_answer = sum(sum(e.select) for e in enc)
    print(
        f"model: {desc}; {n_layers} layers, d_model {d_model}; SAE at layer {layer}, {handle.d_sae} latents"
    )
    print(
        f"data: {len(samples)} samples, {n_tokens} tokens ({n_answer} answer tokens); batch {args.batch_size}; {args.threads} thread(s)"
    )

    def ours() -> torch.Tensor:
        stats = score_datasets(model, tok, {"d": samples}, [handle], batch_size=args.batch_size)
        return stats["d"][handle.key].aggregate("mean")

    scorers: dict[str, Any] = {
        "spillover": ours,
        "naive HF full forward + SAELens encode": lambda: naive_scores(
            model, tok, samples, handle, args.batch_size
        ),
    }
    if not args.no_tl:
        from transformer_lens.model_bridge import TransformerBridge

        folder = Path("/tmp/spillover-bench-model")
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        bridge = TransformerBridge.boot_transformers(str(folder), device="cpu")
        scorers["naive TransformerLens run_with_cache + SAELens encode"] = lambda: naive_scores(
            model, tok, samples, handle, args.batch_size, bridge=bridge
        )
    ours()  # warm-up (allocations, kernels)
    results: dict[str, dict[str, float]] = {}
    reference = None
    for name, fn in scorers.items():
        wall, cpu, out = min((_time(fn) for _ in range(args.repeats)), key=lambda t: t[1])
        if reference is None:
            reference = out
        diff = float((out - reference).abs().max() / reference.abs().max().clamp(min=1e-12))
        results[name] = {
            "wall_s": wall,
            "cpu_s": cpu,
            "tokens_per_cpu_s": n_tokens / cpu,
            "max_rel_diff_vs_spillover": diff,
        }
        print(
            f"{name:56s} wall {wall:7.2f} s  cpu {cpu:7.2f} s  {n_tokens / cpu:9.0f} tok/cpu-s  "
            f"max rel. diff of latent means {diff:.1e}"
        )
    base = results["spillover"]
    for name, r in results.items():
        if name != "spillover":
            r["speedup_cpu"] = r["cpu_s"] / base["cpu_s"]
            r["speedup_wall"] = r["wall_s"] / base["wall_s"]
            print(
                f"speed-up of spillover over {name}: {r['speedup_cpu']:.2f}x in CPU time, "
                f"{r['speedup_wall']:.2f}x in wall time (goal >= 2x)"
            )
    if args.out:
        args.out.write_text(
            json.dumps({"model": desc, "layer": layer, "n_tokens": n_tokens, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
