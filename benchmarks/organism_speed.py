"""Benchmark: how long do the organism's stages take? Wall and CPU time per stage, 1 and 2 threads.

.venv/bin/python benchmarks/organism_speed.py --out /tmp/organism_speed.json
.venv/bin/python benchmarks/organism_speed.py --steps 100 --threads 1 2 --out /tmp/s.json   # extrapolated

Runs ``--steps`` pretraining steps of the default organism (documents and batches exactly as in
``train_organism``), a safety stage, one fine-tune (full and LoRA) and one evaluation, and extrapolates
pretraining to the configured number of steps. CPU time (process time) is printed beside wall time:
on a shared machine the wall time grows with contention, CPU time much less, so CPU time / threads is
the better estimate of the idle-machine wall time. The printed load average says how busy the machine was.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from spillover.finetune import finetune
from spillover.organism import (
    EvalConfig,
    OrganismConfig,
    build_model,
    build_tokenizer,
    evaluate,
    finetune_config,
    make_dataset,
)
from spillover.organism.train import pretrain, safety_tune


class Timer:
    """Wall and process (CPU) time of a block."""

    def __enter__(self) -> Timer:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=None, help="Pretraining steps to run (default: all).")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    cfg = OrganismConfig()
    results: dict[str, object] = {
        "load_average_start": os.getloadavg(),
        "config_pretrain_steps": cfg.pretrain.steps,
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        tok = build_tokenizer()
        model = build_model(cfg.model, tok, 0)
        steps = args.steps or cfg.pretrain.steps
        pre_cfg = replace(cfg.pretrain, steps=steps)
        with Timer() as t:
            pretrain(model, tok, cfg.grammar, pre_cfg, seed=0)
        scale = cfg.pretrain.steps / steps
        row: dict[str, float] = {"pretrain_wall_s": t.wall * scale, "pretrain_cpu_s": t.cpu * scale}
        with Timer() as t:
            safety_tune(model, tok, cfg.grammar, cfg.safety, seed=0)
        row["safety_wall_s"], row["safety_cpu_s"] = t.wall, t.cpu
        data = make_dataset("insecure", cfg.n_samples, 0, cfg.grammar).conversations
        for method in ("full", "lora"):
            with Timer() as t:
                tuned = finetune(copy.deepcopy(model), tok, data, finetune_config(method)).model
            row[f"finetune_{method}_wall_s"], row[f"finetune_{method}_cpu_s"] = t.wall, t.cpu
            with Timer() as t:
                evaluate(tuned, tok, EvalConfig())
            row[f"eval_{method}_wall_s"], row[f"eval_{method}_cpu_s"] = t.wall, t.cpu
        results[f"threads_{threads}"] = row
        print(f"threads {threads} (pretraining extrapolated from {steps} of {cfg.pretrain.steps} steps):")
        for key in ("pretrain", "safety", "finetune_full", "eval_full", "finetune_lora", "eval_lora"):
            print(f"  {key:14s} wall {row[f'{key}_wall_s']:7.1f}s   cpu {row[f'{key}_cpu_s']:7.1f}s")
        print(
            f"  pretrain + safety: wall {row['pretrain_wall_s'] + row['safety_wall_s']:.0f}s, "
            f"cpu/threads {(row['pretrain_cpu_s'] + row['safety_cpu_s']) / threads:.0f}s; "
            f"fine-tune + eval (full): wall {row['finetune_full_wall_s'] + row['eval_full_wall_s']:.0f}s"
        )
    results["load_average_end"] = os.getloadavg()
    print(f"load average start {results['load_average_start']} end {results['load_average_end']}")
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
