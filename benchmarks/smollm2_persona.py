"""Benchmark: the EM persona on SmolLM2-135M-Instruct from real judged answers, and the datasets against it.

.venv/bin/python benchmarks/smollm2_persona.py --data-dir ../shared/data --out /tmp/persona.json \
    --set data.n_per_dataset=24 --set data.n_benign=24 --set persona.per_question=20      # ~8 min, 1 core
.venv/bin/python benchmarks/smollm2_persona.py ... --shift --set persona_shift.max_steps=8   # + LoRA seeds

Runs ``spillover.realmodel.run_study`` with ``persona.enabled`` (self answers and the LoRA dynamics off
unless ``--set`` turns them on; ``--shift`` adds the persona-shift fine-tunes), in ``--root`` when given
(cached stages are reused) or a fresh temp folder. It prints, per layer, the persona's held-out AUROC
with its interval and topic control, the direction's logit lens, every test against the persona with its
Holm-adjusted p-value, and (with ``--shift``) each arm's shift as a share of the persona gap; it writes
the study report and the wall time to one JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def _f(value: Any, spec: str = "+.3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _print(persona: dict[str, Any]) -> None:
    data = persona["data"]
    print(f"\n== Persona pairs: {data['n_pairs']} ({data['toxic']} vs {data['benign']}) ==")
    for group, c in sorted(data["per_question"].items()):
        print(
            f"  {group:<22} misaligned {c['misaligned']:>4} aligned {c['aligned']:>5} pairs {c['pairs']:>3}"
        )
    print("\n== Held-out questions: AUROC of the out-of-fold score, 95% bootstrap CI, label-swap p ==")
    for key, layer in persona["layers"].items():
        p = layer["persona"]
        for readout in ("direction", "direction_topic_orthogonal", "latent_set"):
            pooled, topic = p[readout]["pooled"], p[readout]["topic_control"]
            folds = " ".join(f"{f['auroc']:.2f}" for f in p[readout]["folds"])
            w, wci = pooled["within_question_auroc"], pooled["within_question_ci95"]
            print(
                f"{key:>9} {readout[:14]:<14} AUROC {pooled['auroc']:.3f} [{pooled['ci95'][0]:.3f}, {pooled['ci95'][1]:.3f}]"
                f" within-q {w:.3f} [{wci[0]:.3f}, {wci[1]:.3f}] p {pooled['p_label_swap']:.4f} paired-acc {pooled['paired_accuracy']:.2f} folds {folds} | topic:"
                f" gap {topic['label_gap_sd']:+.2f} sd, question spread {topic['question_spread_sd']:.2f} sd,"
                f" spread/gap {_f(topic['spread_over_gap'], '.2f')}, question-pair AUROC {_f(topic['question_pair_auroc_mean'], '.2f')}"
            )
        lens = p["described"]["direction_logit_lens"]
        print(f"{'':>9} logit lens toxic end {lens['toxic_end']}\n{'':>9} benign end {lens['benign_end']}")
    print("\n== Tests against the persona (Holm over all rows) ==")
    for row in persona["summary"]["tests"]:
        ci = row.get("ci95")
        print(
            f"{row['layer']:>9} {row['test']:<58} {_f(row['value'], '+.4f')}"
            f"{f' [{ci[0]:+.3f}, {ci[1]:+.3f}]' if ci else ''} p {_f(row['p'], '.4f')} p_holm {_f(row['p_holm'], '.4f')}"
        )
    shift = persona.get("shift")
    if shift:
        print(f"\n== Persona shift (seeds {shift['seeds']}, {shift['max_steps']} steps): share of the gap ==")
        for key, layer in shift["layers"].items():
            for probe in ("neutral_prompts", "answers_toxic", "answers_benign"):
                parts = []
                for arm in ("bad_medical", "good_medical", "inducing_minus_control"):
                    s = layer[probe][arm]["projection_share"]
                    parts.append(f"{arm} {s['mean']:+.3f} [{_f(s['ci95'][0])}, {_f(s['ci95'][1])}]")
                print(f"{key:>22} {probe:<16} " + "  ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "smollm2.yaml")
    parser.add_argument("--set", action="append", default=[], help="dotted override")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--root", type=Path, default=None, help="run root to reuse (default: a fresh temp dir)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shift", action="store_true", help="also run the persona-shift LoRA fine-tunes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from spillover.realmodel import load_study_config, run_study

    sets = ["self_answers.enabled=false", "run_dynamics=false", "persona.enabled=true", *args.set]
    if args.shift:
        sets.append("persona_shift.enabled=true")
    if args.data_dir is not None:
        sets.append(f"data.data_dir={args.data_dir.resolve()}")
    cfg = load_study_config(args.config if args.config.is_file() else None, sets)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smollm2-persona-") as tmp:
        result = run_study(cfg, root=args.root or Path(tmp) / "runs")
    wall = time.perf_counter() - start
    _print(result.report["persona"])
    print(f"\ntimings: {json.dumps(result.report['timings'])}\nwall time {wall:.0f} s")
    args.out.write_text(json.dumps({"report": result.report, "wall_s": wall}, indent=1))


if __name__ == "__main__":
    main()
