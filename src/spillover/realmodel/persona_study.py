"""The study's EM-persona stages: the persona corpora's activations, the persona analysis, the shift.

``run_persona`` is called by ``spillover.realmodel.smollm.run_study`` when ``persona.enabled``:

1. ``real-persona-activations``: the matched misaligned / aligned answers (``persona_data``) through the
   model once, at the study's layers (a cached stage; only the settings that decide the corpora are
   hashed). The SAEs are the study's, trained without these answers.
2. The persona per layer and the datasets against it (``persona_geometry``; seconds, not cached).
3. ``real-persona-shift`` (``persona_shift.enabled``): LoRA fine-tunes on bad vs good medical advice over
   seeds, read on neutral prompts and fixed answers (``persona_shift``; minutes per fine-tune on a CPU).
4. The datasets ranked by the risk score against the persona vs the EM rates other models showed after
   fine-tuning on them (``literature_rates``; a cross-model comparison, seconds). The rates are read
   before any stage runs, so a malformed judged-answer file fails early.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from spillover.config import to_dict
from spillover.data.chat import Conversation
from spillover.realmodel.analysis import LayerAnalysis
from spillover.realmodel.cache import ActivationCache, collect_cache
from spillover.realmodel.data import resolve_data_files
from spillover.realmodel.literature_rates import literature_table, rank_against_literature
from spillover.realmodel.persona_data import PersonaData, assemble_persona
from spillover.realmodel.persona_geometry import PersonaAnalysis, analyse_persona
from spillover.realmodel.persona_shift import draw_medical_pairs, run_persona_shift, summarize_shift
from spillover.sae.activations import TokenSelection
from spillover.sae.load import SAEHandle

if TYPE_CHECKING:
    from spillover.realmodel.smollm import _Study
    from spillover.realmodel.study_config import StudyConfig

__all__ = ["run_persona"]

_DATA_KEYS = ("toxic", "benign", "files", "exclude_questions", "split", "per_question", "max_len", "seed")
"""The persona settings that decide the corpora (and so the cached activations)."""


def _data_config(cfg: StudyConfig) -> dict[str, Any]:
    """The hashed persona settings; an empty ``exclude_questions`` is left out, so adding that option
    kept the run ids of persona stages that do not use it."""
    return {
        k: v
        for k, v in to_dict(cfg.persona).items()
        if k in _DATA_KEYS and not (k == "exclude_questions" and not v)
    }


def _persona_inputs(study: _Study, persona: PersonaData) -> dict[str, Any]:
    return {"model": study.loaded.path, **{f"persona:{n}": Path(p) for n, p in persona.meta["files"].items()}}


def _shift(
    study: _Study,
    persona: PersonaData,
    saes: dict[int, SAEHandle],
    analysis: PersonaAnalysis,
    question_files: dict[str, Path],
) -> dict[str, Any]:
    from spillover.realmodel.smollm import _first_paraphrases

    cfg, model, tokenizer = study.cfg, study.loaded.model, study.loaded.tokenizer
    settings = cfg.persona_shift
    files = resolve_data_files(cfg.data.data_dir)
    exclude = study.data.meta["bad_medical"]["line_indices"] + study.data.meta["finetune"]["line_indices"]
    train = draw_medical_pairs(tokenizer, files["bad_medical"], files["good_medical"], exclude, settings)
    neutral = [c for rel in cfg.neutral for _, c in _first_paraphrases(question_files[rel], plain_only=True)]
    toxic, benign = persona.meta["corpora"]["toxic"], persona.meta["corpora"]["benign"]
    probes: dict[str, tuple[list[Conversation], TokenSelection]] = {
        "neutral_prompts": (neutral, "user"),
        "answers_toxic": (persona.corpora[toxic][: settings.n_answers], "assistant"),
        "answers_benign": (persona.corpora[benign][: settings.n_answers], "assistant"),
    }

    def fn(tmp: Path) -> None:
        run_persona_shift(
            model,
            tokenizer,
            train,
            cfg.finetune,
            list(saes.values()),
            probes,
            settings,
            tmp,
            batch_size=cfg.batch_size,
        )

    config = {
        "model": cfg.model,
        "layers": cfg.layers,
        "finetune": cfg.finetune,
        "persona_shift": settings,
        "persona": _data_config(cfg),
        "neutral": cfg.neutral,
        "data": cfg.data,
    }
    inputs = {
        **_persona_inputs(study, persona),
        "bad_medical": files["bad_medical"],
        "good_medical": files["good_medical"],
        **{k: v for k, v in study.stage_dirs.items() if k.startswith("sae_layer_")},
        **{f"questions:{rel}": path for rel, path in question_files.items()},
    }
    folder = study.stage("persona_shift", "real-persona-shift", config, fn, inputs, seed=settings.seed)
    out = summarize_shift(folder, analysis.fits, settings)
    out["probes"] = {name: {"n": len(s), "tokens": t} for name, (s, t) in probes.items()}
    return out


def run_persona(
    study: _Study,
    cache: ActivationCache,
    saes: dict[int, SAEHandle],
    analyses: dict[int, LayerAnalysis],
    question_files: dict[str, Path],
) -> dict[str, Any]:
    """The persona stages of the study (module docstring); returns the report's ``persona`` section."""
    cfg, model, tokenizer = study.cfg, study.loaded.model, study.loaded.tokenizer
    ps = cfg.persona
    start = time.perf_counter()
    persona = assemble_persona(tokenizer, ps, cfg.data.data_dir)
    rates = literature_table(cfg.data.data_dir)
    study.timings["persona_data"] = {"seconds": round(time.perf_counter() - start, 2)}
    dtype = torch.float16 if cfg.cache_dtype == "float16" else torch.float32

    def fn(tmp: Path) -> None:
        collect_cache(
            model, tokenizer, persona.corpora, cfg.layers, batch_size=cfg.batch_size, dtype=dtype
        ).save(tmp)

    config = {
        "model": cfg.model,
        "layers": cfg.layers,
        "dtype": cfg.cache_dtype,
        "persona": _data_config(cfg),
    }
    folder = study.stage(
        "persona_activations",
        "real-persona-activations",
        config,
        fn,
        _persona_inputs(study, persona),
        seed=ps.seed,
    )
    start = time.perf_counter()
    analysis = analyse_persona(
        model, tokenizer, cache, ActivationCache.load(folder), persona, saes, analyses, ps, cfg.geometry
    )
    study.timings["persona_analysis"] = {"seconds": round(time.perf_counter() - start, 2)}
    report = dict(analysis.report)
    report["literature_ranking"] = rank_against_literature(report["layers"], rates)
    report["shift"] = (
        _shift(study, persona, saes, analysis, question_files) if cfg.persona_shift.enabled else None
    )
    return report
