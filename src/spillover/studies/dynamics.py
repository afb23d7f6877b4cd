"""Training dynamics: toxic-feature activation on neutral prompts and the misaligned rate, per checkpoint.

method.md step 9 / consequence 3: during narrow fine-tuning, the activation of the toxic latents (read
with the *base* model's SAE) on neutral prompts should rise together with the misaligned-answer rate.
``measure_checkpoints`` does the measurement for any HF model given its checkpoints, an SAE and a
callable that returns a misaligned rate; ``organism_dynamics`` wires it for the model organism as a
cached stage (fine-tune with checkpoints, then measure step 0 and every checkpoint).

Python::

    from spillover.studies.dynamics import DynamicsConfig, organism_dynamics
    stage = organism_dynamics(art, sae_dir, DynamicsConfig(dataset="insecure"))
    json.loads((stage / "dynamics.json").read_text())["toxic_activation"]

The toxic activation at a checkpoint is the mean over neutral prompts of the summed token-mean
activation of the toxic latents, on the prompts' own (user) tokens by default, so it measures the
model's internal state on unrelated inputs, not the harm of its answers. ``tokens="generation"`` reads
instead the one position that emits the answer's first token (the end of the prompt with the chat
template's generation prompt), where a model like the organism decides which answer it gives.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

__all__ = [
    "DynamicsConfig",
    "DynamicsPoint",
    "load_checkpoint",
    "measure_checkpoints",
    "organism_dynamics",
    "summarize_dynamics",
    "toxic_activation_on",
]

log = logging.getLogger(__name__)


class DynamicsPoint(NamedTuple):
    """The measurements at one fine-tuning step."""

    step: int
    toxic_activation: float
    """Mean over neutral prompts of the summed toxic-latent activation (token mean)."""
    misaligned_rate: float | None
    """Misaligned-answer rate at this step (None when it could not be computed)."""
    em_probability: float | None = None
    """The organism's exact EM probability at this step (same prompts, no sampling noise), when measured."""


@dataclass(frozen=True)
class DynamicsConfig:
    """The organism's dynamics run."""

    dataset: str = "insecure"
    """Organism dataset fine-tuned on."""
    seeds: tuple[int, ...] = (0,)
    """Fine-tuning seeds (each a separate run; the summary averages them)."""
    checkpoint_every: int = 20
    """Optimizer steps between measurements."""
    finetune_method: Literal["full", "lora"] = "full"
    finetune_steps: int | None = None
    """Override the organism recipe's optimizer steps."""
    n_prompts: int = 200
    """Neutral prompts for the toxic activation."""
    tokens: Literal["user", "all", "generation"] = "user"
    """Which tokens of the neutral prompts are read. Special tokens never are, so on the organism's
    single-turn prompts ``"all"`` reads the same tokens as ``"user"``; ``"generation"`` reads the position
    that emits the answer's first token (measured: docs/results.md#dynamics)."""
    n_eval: int = 50
    """Answers per out-of-domain evaluation domain at each checkpoint."""
    toxic_k: int | None = None
    """Toxic latents (None: the geometry default for the SAE width)."""

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1 or self.n_prompts < 1 or self.n_eval < 1:
            raise ValueError("checkpoint_every, n_prompts and n_eval must be >= 1")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        from spillover.filtering.scores import check_toxic_k

        check_toxic_k(self.toxic_k)


@torch.no_grad()
def toxic_activation_on(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    sae: Any,
    toxic_idx: torch.Tensor,
    *,
    tokens: Literal["user", "all", "assistant", "generation"] = "user",
) -> float:
    """Mean over ``prompts`` of the summed token-mean activation of the toxic latents.

    Args:
        model: the (fine-tuned) HF model.
        tokenizer: its tokenizer.
        prompts: conversations (e.g. single user turns).
        sae: an ``SAEHandle`` bound to a site of ``model`` (the base model's SAE).
        toxic_idx: toxic latent indices.
        tokens: which tokens are read; ``"generation"``: only the position that emits the answer's first
            token (:func:`generation_features`).
    """
    from spillover.filtering.features import sample_features
    from spillover.filtering.scores import toxic_activation

    if tokens == "generation":
        return float(toxic_activation(generation_features(model, tokenizer, prompts, sae), toxic_idx).mean())
    feats = sample_features(model, tokenizer, prompts, sae, tokens=tokens)
    has_tokens = feats.n_tokens_N > 0
    if not bool(has_tokens.any()):
        raise ValueError(f"no prompt has {tokens} tokens to read")
    return float(toxic_activation(feats.feature_acts_NF[has_tokens], toxic_idx).mean())


@torch.no_grad()
def generation_features(
    model: Any, tokenizer: Any, prompts: Sequence[Any], sae: Any, *, batch_size: int = 64
) -> torch.Tensor:
    """SAE latents ``(n_prompts, d_sae)`` at the position that emits each answer's first token: the last
    token of the prompt rendered with the chat template's generation prompt (a special token, which the
    token-mean readers skip). Prompts run in batches of equal length, so no padding shifts a position."""
    from spillover.sae.activations import model_device
    from spillover.sae.sites import capture

    encoded = [
        list(
            tokenizer.apply_chat_template(
                list(p), add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )
        for p in prompts
    ]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    out = torch.zeros(len(encoded), sae.d_sae)
    device = model_device(model)
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            rows = group[start : start + batch_size]
            ids_BT = torch.tensor([encoded[i] for i in rows], device=device)
            acts = capture(model, [sae.site], ids_BT, torch.ones_like(ids_BT))[sae.site]
            out[rows] = sae.encode(acts[:, -1]).float().cpu()
    return out


def load_checkpoint(path: Path, base: Path | None = None) -> tuple[Any, Any]:
    """Load a saved checkpoint: a full model folder, or a LoRA adapter folder (merged into ``base``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spillover.finetune.core import load_adapter

    if (path / "adapter_config.json").is_file():
        if base is None:
            raise ValueError(f"{path} is a LoRA adapter; pass the base model folder")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = load_adapter(model, path).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path if (path / "tokenizer_config.json").is_file() else base)
    return model, tokenizer


def measure_checkpoints(
    checkpoints: Sequence[tuple[int, Path]],
    sae_dir: Path,
    toxic_idx: torch.Tensor,
    prompts: Sequence[Any],
    misaligned: Callable[[Any, Any], float | None | tuple[float | None, float | None]],
    *,
    base: Path | None = None,
    tokens: Literal["user", "all", "assistant", "generation"] = "user",
    journal: Path | None = None,
    key: str = "",
) -> list[DynamicsPoint]:
    """Measure toxic activation and the misaligned rate at each checkpoint.

    Args:
        checkpoints: ``(step, folder)`` pairs; step 0 is usually the base model's folder.
        sae_dir: the base model's SAE (SAELens folder); bound to each checkpoint's same site.
        toxic_idx: toxic latents of that SAE.
        prompts: neutral prompts.
        misaligned: ``f(model, tokenizer) -> rate`` (e.g. an EM evaluation), or ``-> (rate, exact)`` where
            an exact EM probability is measured too (the organism's).
        base: base model folder, for LoRA adapter checkpoints.
        tokens: which prompt tokens are read.
        journal: a JSONL file that keeps every finished point (appended as it is measured); points already
            in it, for the same ``key`` and checkpoint folder, are read back instead of measured again, so a
            run that fails at one checkpoint resumes after the last finished one. The caller must use a
            journal only for one configuration (e.g. name it by the stage's run id).
        key: tells runs apart within one journal (e.g. the fine-tuning seed).
    """
    from spillover.progress import track
    from spillover.sae.load import load_sae

    done = _read_journal(journal, key) if journal is not None else {}
    points: list[DynamicsPoint] = []
    for step, folder in track(list(checkpoints), "dynamics"):
        if (step, str(folder)) in done:
            points.append(done[step, str(folder)])
            continue
        model, tokenizer = load_checkpoint(folder, base)
        sae = load_sae(sae_dir, model)
        tox = toxic_activation_on(model, tokenizer, prompts, sae, toxic_idx, tokens=tokens)
        value = misaligned(model, tokenizer)
        rate, exact = value if isinstance(value, tuple) else (value, None)
        log.info("step %d: toxic activation %.4f, misaligned %s (exact %s)", step, tox, rate, exact)
        point = DynamicsPoint(step, tox, rate, exact)
        points.append(point)
        if journal is not None:
            _append_journal(journal, {"key": key, "folder": str(folder), **point._asdict()})
    return points


def _append_journal(journal: Path, record: dict[str, Any]) -> None:
    journal.parent.mkdir(parents=True, exist_ok=True)
    with journal.open("a+b") as f:  # appends always go to the end, wherever we read
        size = f.seek(0, 2)
        torn = False
        if size:
            f.seek(size - 1)
            torn = f.read(1) != b"\n"  # a crash mid-write left half a line: start a new one
        f.write((b"\n" if torn else b"") + json.dumps(record).encode() + b"\n")


def _read_journal(journal: Path, key: str) -> dict[tuple[int, str], DynamicsPoint]:
    """Finished points in ``journal`` for ``key``; a torn last line (a crash mid-write) is ignored."""
    out: dict[tuple[int, str], DynamicsPoint] = {}
    if not journal.is_file():
        return out
    for line in journal.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("key") == key:
            out[rec["step"], rec["folder"]] = DynamicsPoint(
                rec["step"], rec["toxic_activation"], rec["misaligned_rate"], rec.get("em_probability")
            )
    return out


def summarize_dynamics(runs: Sequence[Sequence[DynamicsPoint]], dataset: str = "") -> dict[str, Any]:
    """The report's ``dynamics`` section: per-step means over runs (seeds), SDs and their correlation."""
    if not runs:
        raise ValueError("no dynamics runs")
    steps = [p.step for p in runs[0]]
    for run in runs[1:]:
        if [p.step for p in run] != steps:
            raise ValueError("runs were measured at different steps")
    tox = np.array([[p.toxic_activation for p in run] for run in runs], dtype=float)
    rate = np.array(
        [[math.nan if p.misaligned_rate is None else p.misaligned_rate for p in run] for run in runs]
    )
    tox_mean, rate_mean = tox.mean(0), np.nanmean(rate, axis=0)
    pearson, spearman = _correlations(tox_mean, rate_mean)
    exact: dict[str, Any] = {}
    if all(p.em_probability is not None for run in runs for p in run):
        em = np.array([[p.em_probability for p in run] for run in runs], dtype=float)
        r, rho = _correlations(tox_mean, em.mean(0))
        exact = {
            "em_probability": em.mean(0).tolist(),
            "em_probability_per_seed": em.tolist(),
            "pearson_r_exact": r,
            "spearman_r_exact": rho,
        }
    return {
        "dataset": dataset,
        "steps": steps,
        "toxic_activation": tox_mean.tolist(),
        "toxic_activation_sd": tox.std(0).tolist() if len(runs) > 1 else None,
        "misaligned_rate": [None if not np.isfinite(v) else float(v) for v in rate_mean],
        "misaligned_rate_sd": np.nanstd(rate, axis=0).tolist() if len(runs) > 1 else None,
        "per_seed": {
            "toxic_activation": tox.tolist(),
            "misaligned_rate": [[None if not np.isfinite(v) else float(v) for v in r] for r in rate],
        },
        "pearson_r": pearson,
        "spearman_r": spearman,
        **exact,
        "n_runs": len(runs),
    }


def _correlations(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    """Pearson and Spearman of two curves over their finite points (None with < 3 or a flat curve)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return None, None
    from scipy.stats import spearmanr

    return float(np.corrcoef(x[ok], y[ok])[0, 1]), float(spearmanr(x[ok], y[ok]).statistic)


def organism_dynamics(
    art: Any,
    sae_dir: Path,
    cfg: DynamicsConfig,
    *,
    toxic: Path | None = None,
    benign: Path | None = None,
    root: str | Path | None = None,
) -> Path:
    """Fine-tune the organism with checkpoints and measure each (cached stage with ``dynamics.json``).

    Resumable: each finished checkpoint's measurement is journaled beside the stage folder, so a run that
    fails (a judge timeout, an interrupt) measures only the rest when called again; the journal ends up in
    the finished stage as ``points.jsonl``.

    Args:
        art: ``spillover.organism.OrganismArtifacts``.
        sae_dir: the base organism's SAE (SAELens folder).
        cfg: what to run.
        toxic: toxic reference conversations (default: the organism's ``reference/toxic.jsonl``).
        benign: benign reference conversations (default: ``reference/benign.jsonl``).
        root: run root.
    """
    from spillover.organism.pipeline import finetune_config, finetune_organism
    from spillover.rundir import default_root, run_id, run_stage

    toxic = toxic or art.data_dir / "reference" / "toxic.jsonl"
    benign = benign or art.data_dir / "reference" / "benign.jsonl"
    ft_dirs: dict[int, Path] = {}
    for seed in cfg.seeds:
        ft_cfg = finetune_config(
            cfg.finetune_method, seed=seed, steps=cfg.finetune_steps, checkpoint_every=cfg.checkpoint_every
        )
        ft_dirs[seed] = finetune_organism(art, cfg.dataset, cfg.finetune_method, ft_cfg, root=root)

    inputs: dict[str, Any] = {"sae": sae_dir, "toxic": toxic, "benign": benign, "model": art.run_dir}
    inputs.update({f"finetune_seed{s}": d for s, d in ft_dirs.items()})
    # Finished checkpoints outlive a failed run: they are journaled beside the stage folder, by its id.
    root_path = Path(root) if root is not None else default_root()
    journal = root_path / "dynamics" / f".{run_id('dynamics', cfg, inputs)}.points.jsonl"

    def fn(out: Path) -> None:
        from spillover.data.chat import load_chat
        from spillover.filtering.features import toxic_reference
        from spillover.organism.datasets import neutral_prompts
        from spillover.organism.evaluate import OOD_DOMAINS, EvalConfig, EvalSampling, evaluate
        from spillover.organism.pipeline import load_organism
        from spillover.sae.load import load_sae

        base_model, tokenizer = load_organism(art.model_dir)
        sae = load_sae(sae_dir, base_model)
        ref = toxic_reference(base_model, tokenizer, load_chat(toxic), load_chat(benign), sae, k=cfg.toxic_k)
        prompts = neutral_prompts(cfg.n_prompts, art.config.seed + 17)
        runs = []
        for seed, ft in ft_dirs.items():
            ckpt_root = ft / "checkpoints"
            ckpts = (
                sorted(
                    (
                        (int(p.name.split("-")[1]), p)
                        for p in ckpt_root.iterdir()
                        if p.name.startswith("step-")
                    ),
                    key=lambda t: t[0],
                )
                if ckpt_root.is_dir()
                else []
            )
            final = ft / ("adapter" if cfg.finetune_method == "lora" else "model")
            n_steps = len(json.loads((ft / "losses.json").read_text()))
            eval_cfg = EvalConfig(
                n_per_domain=cfg.n_eval, domains=OOD_DOMAINS, sampling=EvalSampling(seed=seed)
            )

            def rate(
                model: Any, tok: Any, eval_cfg: EvalConfig = eval_cfg
            ) -> tuple[float | None, float | None]:
                result = evaluate(model, tok, eval_cfg)
                est = result.em_probability
                exact = est.estimate if est is not None and est.usable else None
                return result.ood_misaligned, exact

            series = [(0, art.model_dir), *ckpts, (n_steps, final)]
            runs.append(
                measure_checkpoints(
                    series,
                    sae_dir,
                    ref.toxic_idx,
                    prompts,
                    rate,
                    base=art.model_dir,
                    tokens=cfg.tokens,
                    journal=journal,
                    key=f"seed{seed}",
                )
            )
        summary = summarize_dynamics(runs, cfg.dataset)
        summary["toxic_idx"] = ref.toxic_idx.tolist()
        summary["tokens"] = cfg.tokens
        (out / "dynamics.json").write_text(json.dumps(summary, indent=1))
        shutil.copy(journal, out / "points.jsonl")

    stage = run_stage("dynamics", cfg, fn, root=root, inputs=inputs)
    journal.unlink(missing_ok=True)
    return stage
