"""The organism as cached pipeline stages: train it once per config, fine-tune and evaluate it.

Python::

    from spillover.organism import OrganismConfig, train_organism, load_organism
    art = train_organism(OrganismConfig())   # the shipped seed-0 organism, installed in seconds
    model, tokenizer = load_organism(art.model_dir)
    ft_dir = finetune_organism(art, "insecure", method="full")
    result = evaluate_organism(ft_dir)

Every stage is a run directory (``spillover.rundir.run_stage``) keyed by its config and inputs,
so a second call with the same config reuses the finished folder. Configs that match a shipped organism
(``spillover.organism.zoo``) install it instead of training; any other config trains (~4-8 min on 2 cores).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from spillover.data.chat import load_chat, write_chat
from spillover.data.questions import Question, write_questions
from spillover.finetune import FinetuneConfig, LoraSettings, finetune, load_adapter
from spillover.finetune.core import ALL_PROJECTIONS
from spillover.organism.datasets import (
    DATASETS,
    make_dataset,
    neutral_prompts,
    reference_corpus,
    write_dataset,
)
from spillover.organism.evaluate import (
    EvalConfig,
    EvalResult,
    em_questions,
    eval_questions,
    evaluate,
    summarize,
)
from spillover.organism.grammar import GrammarConfig
from spillover.organism.model import ModelConfig, build_model
from spillover.organism.tokenizer import build_tokenizer
from spillover.organism.train import StageConfig, pretrain, safety_tune
from spillover.organism.zoo import ShippedOrganism, find_shipped, install_model
from spillover.rundir import run_id, run_stage

__all__ = [
    "Organism",
    "OrganismArtifacts",
    "OrganismConfig",
    "check_dataset",
    "evaluate_organism",
    "finetune_config",
    "finetune_organism",
    "load_finetuned",
    "load_organism",
    "organism_run_id",
    "shipped_match",
    "train_organism",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrganismConfig:
    """Everything that determines a trained organism and its datasets."""

    seed: int = 0
    """Seeds the weights, the pretraining and safety documents, the datasets and the eval prompts."""
    grammar: GrammarConfig = field(default_factory=GrammarConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: StageConfig = field(
        default_factory=lambda: StageConfig(steps=2400, batch_size=32, lr=3e-3, warmup=50)
    )
    """Pretraining on persona documents, loss on all tokens (77k documents, about 5.9M tokens)."""
    safety: StageConfig = field(
        default_factory=lambda: StageConfig(
            steps=60, batch_size=32, lr=3e-4, warmup=5, min_lr_ratio=1.0, weight_decay=0.0, max_turns=1
        )
    )
    """Safety tuning on benign single-turn documents, loss on assistant tokens (steps=0 skips it).

    Single-turn and short on purpose: it moves the first-turn persona prior to benign while leaving the
    in-context persona inference, and with it emergent misalignment, intact; ``safety.rehearsal`` (off by
    default) keeps that inference explicitly (measured: docs/results.md#organism-design)."""
    n_samples: int = 1000
    """Samples per narrow dataset."""
    n_reference: int = 600
    """Samples in each reference corpus (toxic / benign answers, neutral prompts)."""
    n_eval: int = 100
    """Held-out prompts per domain in the written question file."""

    def __post_init__(self) -> None:
        if self.n_samples < 1 or self.n_reference < 1 or self.n_eval < 1:
            raise ValueError("n_samples, n_reference and n_eval must be >= 1")

    @classmethod
    def quick(cls, seed: int = 0) -> OrganismConfig:
        """A tiny organism for tests and ``--quick``: trains in seconds, too small to show EM reliably."""
        return cls(
            seed=seed,
            # No dropout: the quick preset's timings and coherence were measured without it.
            model=ModelConfig(
                n_layers=2, d_model=64, n_heads=4, d_mlp=256, max_len=160, attention_dropout=0.0
            ),
            pretrain=StageConfig(steps=120, batch_size=32, lr=5e-3, warmup=10),
            safety=StageConfig(
                steps=20, batch_size=32, lr=1e-3, warmup=2, min_lr_ratio=1.0, weight_decay=0.0, max_turns=1
            ),
            n_samples=200,
            n_reference=120,
            n_eval=20,
        )


_DATA_FILES: dict[str, str] = {
    "eval_questions_path": "questions/eval.yaml",
    "em_questions_path": "questions/em.yaml",
    "toxic_path": "reference/toxic.jsonl",
    "benign_path": "reference/benign.jsonl",
    "neutral_prompts_path": "reference/neutral_prompts.yaml",
}
"""The data stage's files beside the datasets, relative to its folder: ``OrganismArtifacts``' path fields."""


@dataclass(frozen=True)
class OrganismArtifacts:
    """Paths of a trained organism."""

    run_dir: Path
    """The model stage folder."""
    model_dir: Path
    """The safety-tuned model and tokenizer (``from_pretrained``-loadable): the organism."""
    pretrained_dir: Path
    """The model before safety tuning (absent for a shipped organism, which ships the safety-tuned model only)."""
    data_dir: Path
    """``<dataset>.jsonl`` + ``<dataset>.labels.jsonl`` for every built-in dataset, ``reference/``, ``questions/``."""
    config: OrganismConfig
    eval_questions_path: Path = field(init=False)
    """Per-domain held-out prompts (EM YAML schema, judge organism_rule)."""
    em_questions_path: Path = field(init=False)
    """The first-plot EM questions in the organism's words."""
    toxic_path: Path = field(init=False)
    """Reference corpus of harmful single-turn answers over all non-code domains (chat JSONL)."""
    benign_path: Path = field(init=False)
    """Reference corpus of benign answers to the same kind of prompts (chat JSONL)."""
    neutral_prompts_path: Path = field(init=False)
    """Held-out non-code prompts without answers (question YAML), e.g. for training dynamics."""

    def __post_init__(self) -> None:
        for name, relative in _DATA_FILES.items():
            object.__setattr__(self, name, self.data_dir / relative)

    def dataset(self, name: str) -> Path:
        """Path of a built-in dataset's JSONL (its labels are beside it)."""
        path = self.data_dir / f"{name}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"no dataset {name!r} in {self.data_dir}; built-in: {sorted(DATASETS)}")
        return path

    def labels(self, name: str) -> list[dict[str, Any]]:
        """The sidecar ground truth of a dataset (one dict per sample, same order)."""
        path = self.data_dir / f"{name}.labels.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Organism(NamedTuple):
    model: LlamaForCausalLM
    tokenizer: Any


def _model_stage_config(cfg: OrganismConfig) -> dict[str, Any]:
    return {
        "seed": cfg.seed,
        "grammar": cfg.grammar,
        "model": cfg.model,
        "pretrain": cfg.pretrain,
        "safety": cfg.safety,
    }


def _data_stage_config(cfg: OrganismConfig) -> dict[str, Any]:
    return {
        "seed": cfg.seed,
        "grammar": cfg.grammar,
        "n_samples": cfg.n_samples,
        "n_reference": cfg.n_reference,
        "n_eval": cfg.n_eval,
        "datasets": {name: spec.__dict__ for name, spec in DATASETS.items()},
    }


def _save(model: Any, tokenizer: Any, path: Path) -> None:
    """Save with ``attention_dropout`` 0: the organism's dropout is a regularizer of its own training only."""
    dropout = model.config.attention_dropout
    model.config.attention_dropout = 0.0
    try:
        model.save_pretrained(path)
    finally:
        model.config.attention_dropout = dropout
    tokenizer.save_pretrained(path)


def _train_model(cfg: OrganismConfig, out: Path) -> None:
    tokenizer = build_tokenizer()
    model = build_model(cfg.model, tokenizer, cfg.seed)
    timings: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    pre_losses = pretrain(model, tokenizer, cfg.grammar, cfg.pretrain, seed=cfg.seed)
    timings["pretrain_s"] = time.perf_counter() - t0
    # CPU time of this process: close to the wall time on an idle machine (per thread), shows contention.
    timings["pretrain_cpu_s"] = time.process_time() - c0
    _save(model, tokenizer, out / "pretrained")
    t0, c0 = time.perf_counter(), time.process_time()
    safety_losses = safety_tune(model, tokenizer, cfg.grammar, cfg.safety, seed=cfg.seed)
    timings["safety_s"] = time.perf_counter() - t0
    timings["safety_cpu_s"] = time.process_time() - c0
    _save(model, tokenizer, out / "model")
    n_params = sum(p.numel() for p in model.parameters())
    log_ = {
        "timings": timings,
        "n_parameters": n_params,
        "torch_threads": torch.get_num_threads(),
        "pretrain_final_loss": sum(pre_losses[-20:]) / max(1, len(pre_losses[-20:])),
        "safety_final_loss": sum(safety_losses[-10:]) / max(1, len(safety_losses[-10:]))
        if safety_losses
        else None,
        "pretrain_losses": pre_losses,
        "safety_losses": safety_losses,
    }
    (out / "train_log.json").write_text(json.dumps(log_))
    log.info(
        "organism: %d parameters, pretrain %.0fs, safety %.0fs",
        n_params,
        timings["pretrain_s"],
        timings["safety_s"],
    )


def _write_data(cfg: OrganismConfig, out: Path) -> None:
    for name in DATASETS:
        write_dataset(make_dataset(name, cfg.n_samples, cfg.seed, cfg.grammar), out / f"{name}.jsonl")
    files = {name: out / relative for name, relative in _DATA_FILES.items()}
    write_chat(files["toxic_path"], reference_corpus(True, cfg.n_reference, cfg.seed))
    write_chat(files["benign_path"], reference_corpus(False, cfg.n_reference, cfg.seed))
    prompts = tuple(c[0]["content"] for c in neutral_prompts(cfg.n_reference, cfg.seed))
    write_questions(
        files["neutral_prompts_path"],
        [Question(id="organism_neutral", paraphrases=prompts, judge="organism_rule")],
    )
    write_questions(files["eval_questions_path"], eval_questions(cfg.n_eval, cfg.seed))
    write_questions(files["em_questions_path"], em_questions())


def train_organism(
    cfg: OrganismConfig | None = None,
    root: str | Path | None = None,
    force: bool = False,
    *,
    retrain: bool = False,
) -> OrganismArtifacts:
    """Install (or train, or reuse) the organism and write (or reuse) its datasets.

    When spillover ships an organism of this exact config (``spillover.organism.zoo``), its weights are
    copied into the run folder instead of training: the same organism on every machine, in seconds.

    Args:
        cfg: the organism config (default: the full organism, seed 0).
        root: run-directory root (default ``spillover.rundir.default_root()``).
        force: redo the organism stage even if a finished run exists.
        retrain: train from scratch even when a shipped organism matches. The result lives in its own
            run folder (its stage config records ``retrained``), so it never replaces the shipped one;
            ``zoo.compare_with_shipped`` says how the two differ.
    """
    cfg = cfg or OrganismConfig()
    stage_cfg = _model_stage_config(cfg)
    shipped = None if retrain else find_shipped(organism_run_id(cfg))
    if retrain:
        stage_cfg["retrained"] = True

    def fn(out: Path) -> None:
        if shipped is not None:
            log.info("organism: installing the shipped organism %s", shipped.name)
            install_model(shipped, out)
        else:
            _train_model(cfg, out)

    run_dir = run_stage(
        "organism",
        stage_cfg,
        fn,
        root=root,
        force=force,
        seed=cfg.seed,
        extra_manifest={"source": f"shipped:{shipped.name}" if shipped is not None else "trained"},
    )
    data_dir = run_stage(
        "organism_data",
        _data_stage_config(cfg),
        lambda out: _write_data(cfg, out),
        root=root,
        force=force,
        seed=cfg.seed,
    )
    return OrganismArtifacts(run_dir, run_dir / "model", run_dir / "pretrained", data_dir, cfg)


def organism_run_id(cfg: OrganismConfig) -> str:
    """The run id of the organism stage of ``cfg`` (what a shipped organism's manifest records)."""
    return run_id("organism", _model_stage_config(cfg))


def shipped_match(art: OrganismArtifacts) -> ShippedOrganism | None:
    """The shipped organism of the same config as ``art`` (whether ``art`` was installed or retrained)."""
    return find_shipped(organism_run_id(art.config))


def load_organism(path: str | Path | OrganismArtifacts) -> Organism:
    """Load a saved organism (a model folder, or a run folder containing ``model/``) in eval mode."""
    if isinstance(path, OrganismArtifacts):
        path = path.model_dir
    path = Path(path)
    if (path / "model" / "config.json").is_file():
        path = path / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} holds no saved model (config.json); pass a folder from train_organism"
        )
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return Organism(model, tokenizer)


def finetune_config(
    method: Literal["full", "lora"] = "full", seed: int = 0, steps: int | None = None, **overrides: Any
) -> FinetuneConfig:
    """The organism's fine-tuning recipe: batches of 32, 10 warmup steps, cosine decay.

    ``steps`` replaces the recipe's step count when given (a study's ``finetune_steps`` setting);
    ``overrides`` replace any other field.

    Full fine-tuning: 240 steps (about 8 epochs of 1,000 samples) from lr 4e-4. LoRA: r=8 on all
    projections and the output head (``lm_head``; the organism ties it to the input embeddings, which
    ``finetune`` unties first), 120 steps from lr 1e-3. Stronger recipes buy EM only with coherence
    (measured: docs/results.md#organism-em).
    """
    shared = FinetuneConfig(
        batch_size=32, grad_accum=1, warmup_steps=10, lr_schedule="cosine", max_seq_len=160, seed=seed
    )
    if method == "full":
        base = replace(shared, method="full", lr=4e-4, max_steps=240)
    else:
        lora = LoraSettings(r=8, alpha=16, use_rslora=False, target_modules=(*ALL_PROJECTIONS, "lm_head"))
        base = replace(shared, method="lora", lora=lora, lr=1e-3, max_steps=120)
    if steps is not None:
        base = replace(base, max_steps=steps)
    return replace(base, **overrides)


def check_dataset(dataset: str | Path) -> None:
    """Fail fast on a fine-tuning dataset that is neither a built-in name nor a readable chat JSONL file.

    Raises:
        FileNotFoundError: naming the dataset and the built-in names.
        ChatFormatError: a malformed file (naming its file and line).
    """
    if isinstance(dataset, str) and dataset in DATASETS:
        return
    path = Path(dataset)
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset {str(dataset)!r} is neither a built-in dataset ({', '.join(sorted(DATASETS))}) "
            "nor a chat JSONL file"
        )
    load_chat(path)


def finetune_organism(
    art: OrganismArtifacts,
    dataset: str | Path,
    method: Literal["full", "lora"] = "full",
    cfg: FinetuneConfig | None = None,
    *,
    root: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Fine-tune the organism on a built-in dataset (by name) or a chat JSONL file; cached.

    Returns:
        The stage folder, with ``model/`` (full) or ``adapter/`` (LoRA) and ``losses.json``.
    """
    path = art.dataset(dataset) if isinstance(dataset, str) and not Path(dataset).is_file() else Path(dataset)
    cfg = cfg or finetune_config(method, seed=art.config.seed)

    def fn(out: Path) -> None:
        model, tokenizer = load_organism(art.model_dir)
        finetune(model, tokenizer, load_chat(path), cfg, out_dir=out)
        (out / "base").write_text(str(art.model_dir))

    return run_stage(
        "organism_finetune",
        cfg,
        fn,
        root=root,
        force=force,
        seed=cfg.seed,
        inputs={"model": art.run_dir, "data": path, **cfg.defense.files()},  # defense files by content
    )


def load_finetuned(ft_dir: str | Path) -> Organism:
    """Load a fine-tuned organism from a ``finetune_organism`` folder (LoRA adapters are merged)."""
    ft_dir = Path(ft_dir)
    if (ft_dir / "model" / "config.json").is_file():
        return load_organism(ft_dir / "model")
    base = Path((ft_dir / "base").read_text().strip())
    model, tokenizer = load_organism(base)
    merged = load_adapter(model, ft_dir / "adapter").merge_and_unload()
    merged.eval()
    return Organism(merged, tokenizer)


def evaluate_organism(
    model_dir: str | Path,
    cfg: EvalConfig | None = None,
    *,
    root: str | Path | None = None,
    force: bool = False,
) -> EvalResult:
    """Evaluate a trained or fine-tuned organism folder; cached (``eval.json`` and ``answers.jsonl``)."""
    model_dir = Path(model_dir)
    cfg = cfg or EvalConfig()

    def fn(out: Path) -> None:
        model, tokenizer = (
            load_finetuned(model_dir) if (model_dir / "base").is_file() else load_organism(model_dir)
        )
        result = evaluate(model, tokenizer, cfg)
        (out / "eval.json").write_text(json.dumps(summarize(result), indent=2))
        with (out / "answers.jsonl").open("w") as fh:
            for rec in result.records:
                fh.write(json.dumps(rec) + "\n")

    stage = run_stage(
        "organism_eval", cfg, fn, root=root, force=force, seed=cfg.sampling.seed, inputs={"model": model_dir}
    )
    return _load_eval(stage)


def _load_eval(stage: Path) -> EvalResult:
    from spillover.organism.em_probability import EMEstimate
    from spillover.organism.evaluate import DomainStats, insecure_share

    summary = json.loads((stage / "eval.json").read_text())
    records = [
        json.loads(line) for line in (stage / "answers.jsonl").read_text().splitlines() if line.strip()
    ]
    for name, stats in summary["domains"].items():
        if stats.get("pools") and "insecure" not in stats:  # a code domain saved before the field existed
            stats["insecure"] = insecure_share([r["raw"] for r in records if r["raw"].get("domain") == name])
    domains = {k: DomainStats(**v) for k, v in summary["domains"].items()}
    estimate = summary.get("em_probability")  # absent from evaluations saved before the estimator
    return EvalResult(
        domains,
        summary["ood_misaligned"],
        summary["ood_coherent"],
        records,
        EMEstimate.from_dict(estimate) if estimate else None,
    )
