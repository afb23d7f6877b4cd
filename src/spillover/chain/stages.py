"""The induce-and-measure chain as cached stages: finetune -> generate -> judge -> metrics.

Each stage runs through :func:`spillover.rundir.run_stage`, so its folder ``<root>/<stage>/<hash>`` is
named by its config and inputs, a finished stage is reused, and a killed one is redone (the judge
resumes from its call cache). The configs are in :mod:`spillover.chain.config`, the judge and rescore
stages in :mod:`spillover.chain.judging`.

CLI: ``spillover finetune|generate|judge|metrics --config chain.yaml --set generate.sampling.max_new_tokens=300``
(each runs the stages it needs and prints its run folder). Python::

    cfg = load_pipeline_config("chain.yaml")
    result = run_chain(cfg)            # ChainResult(finetune, generate, judge, metrics) folders
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal, NamedTuple

from spillover.chain._files import run_root, write_json
from spillover.chain.checks import check_chain
from spillover.chain.config import (
    STAGES,
    FinetuneStageConfig,
    GenerateStageConfig,
    MetricsStageConfig,
    PipelineConfig,
)
from spillover.chain.judging import judge_stage, none_reasons, read_scores
from spillover.data.fetch import resolve_data
from spillover.judge.base import Judge, JudgeScore
from spillover.models.sources import ModelSpec
from spillover.rundir import fingerprint, read_config, run_stage

__all__ = [
    "ChainResult",
    "finetune_stage",
    "generate_stage",
    "metrics_stage",
    "model_identity",
    "run_chain",
]

log = logging.getLogger(__name__)

_FULL_HASH_LIMIT = 256 << 20


class ChainResult(NamedTuple):
    finetune: Path | None
    generate: Path | None
    judge: Path | None
    metrics: Path | None


def model_identity(spec: ModelSpec) -> dict[str, Any]:
    """What identifies a model in run ids: the source (content hash for small local folders) and dtype."""
    from spillover.models.sources import ALIASES, resolve_source

    ident: dict[str, Any] = {"source": spec.source, "dtype": spec.dtype, "revision": spec.revision}
    if spec.trust_remote_code:
        ident["trust_remote_code"] = True
    source = ALIASES.get(spec.source, spec.source)
    if source == "organism" or source.startswith(("package:", "gguf:")) or source.endswith(".gguf"):
        # These resolve to content-addressed folders (organism run id, GGUF digest): a retrained organism
        # or an edited GGUF file gets new ids downstream instead of reusing stale fine-tunes.
        ident["resolved"] = "/".join(Path(resolve_source(source)).parts[-2:])
    path = Path(spec.source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if sum(p.stat().st_size for p in files) <= _FULL_HASH_LIMIT:
            ident["content"] = fingerprint(path)
        else:  # hashing many GB on every call costs more than it protects; names and sizes catch most edits
            ident["files"] = {str(p.relative_to(path)): p.stat().st_size for p in files}
    return ident


def _load(spec: ModelSpec) -> tuple[Any, Any]:
    from spillover.models.sources import load_model

    loaded = load_model(spec)
    return loaded.model, loaded.tokenizer


# -- finetune -------------------------------------------------------------------------------------------
def finetune_stage(
    cfg: FinetuneStageConfig, model: ModelSpec, *, root: str | Path | None = None, force: bool = False
) -> Path:
    """Fine-tune ``model`` on ``cfg.data``; the folder holds ``adapter/`` (or ``model/``), ``checkpoints/``,
    ``losses.json`` and ``summary.json``."""
    from spillover.data.chat import load_chat
    from spillover.finetune.core import finetune

    data = resolve_data(cfg.data)
    if not data.is_file():
        raise FileNotFoundError(f"finetune.data: {data} does not exist")

    def fn(out: Path) -> None:
        convs = load_chat(data, limit=cfg.limit)
        base, tokenizer = _load(model)
        result = finetune(base, tokenizer, convs, cfg, out_dir=out)
        write_json(
            out / "summary.json",
            {
                "n_conversations": len(convs),
                "steps": len(result.losses),
                "first_loss": result.losses[0],
                "final_loss": result.losses[-1],
                "checkpoints": [p.name for p in result.checkpoints],
            },
        )

    config = {"model": model_identity(model), "finetune": cfg}
    return run_stage(
        "finetune",
        config,
        fn,
        root=run_root(root),
        inputs={"data": data, **cfg.defense.files()},  # defense files by content (none: no change)
        force=force,
        seed=cfg.seed,
    )


# -- generate -------------------------------------------------------------------------------------------
def _finetuned_paths(finetune_dir: Path, checkpoint: str | None) -> tuple[str, Path]:
    method = read_config(finetune_dir).get("finetune", {}).get("method", "lora")
    if checkpoint:
        path = finetune_dir / "checkpoints" / checkpoint
        if not path.is_dir():
            have = sorted(p.name for p in (finetune_dir / "checkpoints").glob("step-*"))
            raise FileNotFoundError(f"checkpoint {checkpoint!r} not in {finetune_dir}; have {have}")
    else:
        path = finetune_dir / ("adapter" if method == "lora" else "model")
    return method, path


def generate_stage(
    cfg: GenerateStageConfig,
    model: ModelSpec,
    *,
    finetune_dir: Path | None = None,
    root: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Sample answers to the question file; writes ``answers.jsonl`` and the ``questions.yaml`` used.

    Args:
        cfg: the question file and the sampling settings.
        model: the base model.
        finetune_dir: a finished finetune stage; its adapter (or full model) is sampled from.
    """
    from spillover.data.questions import load_questions, write_questions
    from spillover.generate.records import sampling_plan, write_jsonl

    qpath = resolve_data(cfg.questions)
    if not cfg.questions or not qpath.is_file():
        raise FileNotFoundError(f"generate.questions: question file {cfg.questions!r} does not exist")
    questions = load_questions(qpath)
    plan = sampling_plan(
        questions, samples_per_paraphrase=cfg.samples_per_paraphrase, question_ids=cfg.question_ids
    )
    used = {r.question_id for r in plan}
    if finetune_dir is not None:
        _finetuned_paths(Path(finetune_dir), cfg.checkpoint)  # a missing checkpoint fails before loading

    def fn(out: Path) -> None:
        prompts = [r.conversation for r in plan]
        if cfg.backend == "vllm":
            answers = _generate_vllm(cfg, model, finetune_dir, prompts)
        else:
            answers = _generate_hf(cfg, model, finetune_dir, prompts)
        rows = [{**r.to_dict(), "answer": a} for r, a in zip(plan, answers, strict=True)]
        write_jsonl(out / "answers.jsonl", rows)
        write_questions(out / "questions.yaml", [q for q in questions if q.id in used])
        write_json(
            out / "summary.json",
            {
                "n_answers": len(rows),
                "n_questions": len(used),
                "n_empty": sum(1 for a in answers if not a),
                "mean_chars": sum(len(a) for a in answers) / max(1, len(answers)),
            },
        )

    inputs: dict[str, Any] = {"questions": qpath}
    if finetune_dir is not None:
        inputs["finetune"] = Path(finetune_dir)
    config = {"model": model_identity(model), "generate": cfg}
    return run_stage(
        "generate", config, fn, root=run_root(root), inputs=inputs, force=force, seed=cfg.sampling.seed
    )


def _generate_hf(
    cfg: GenerateStageConfig, spec: ModelSpec, finetune_dir: Path | None, prompts: list[Any]
) -> list[str]:
    from spillover.generate.hf import generate

    if finetune_dir is not None:
        method, path = _finetuned_paths(Path(finetune_dir), cfg.checkpoint)
        if method == "lora":
            from spillover.finetune.core import load_adapter

            base, tokenizer = _load(spec)
            model = load_adapter(base, path)
        else:
            model, tokenizer = _load(ModelSpec(source=str(path), dtype=spec.dtype, device=spec.device))
    else:
        model, tokenizer = _load(spec)
    model.eval()
    return generate(model, tokenizer, prompts, sampling=cfg.sampling, batch_size=cfg.batch_size)


def _generate_vllm(
    cfg: GenerateStageConfig, spec: ModelSpec, finetune_dir: Path | None, prompts: list[Any]
) -> list[str]:
    from spillover.generate.vllm import VLLMGenerator
    from spillover.models.sources import resolve_source

    base = resolve_source(spec.source)
    adapters: dict[str, Path] = {}
    if finetune_dir is not None:
        method, path = _finetuned_paths(Path(finetune_dir), cfg.checkpoint)
        if method == "lora":
            adapters["finetuned"] = path
        else:
            base = str(path)
    gen = VLLMGenerator(base, adapters, cfg.vllm, seed=cfg.sampling.seed)
    return gen.generate(prompts, "finetuned" if adapters else None, sampling=cfg.sampling)


# -- metrics --------------------------------------------------------------------------------------------
def metrics_stage(
    cfg: MetricsStageConfig, *, scores_dir: Path, root: str | Path | None = None, force: bool = False
) -> Path:
    """EM rates per question and pooled, with Jeffreys-posterior CIs; writes ``metrics.json``.

    ``metrics.json`` holds ``pooled`` and ``per_question`` (see :class:`spillover.metrics.EMMetrics`), the
    thresholds, and ``none_reasons``: per metric, how many answers have no score because the judge call
    failed (``judge_failed``) or the judge gave too little mass to numbers (``low_numeric_mass``).
    """
    from spillover.data.questions import Question
    from spillover.metrics import em_metrics

    scores_dir = Path(scores_dir)
    rows = read_scores(scores_dir)

    def fn(out: Path) -> None:
        scores = [JudgeScore(r.get("aligned"), r.get("coherent"), r.get("raw") or {}) for r in rows]
        qids = [str(r["question_id"]) for r in rows]
        if cfg.group_by == "base_id":
            qids = [Question(id=q, paraphrases=("",)).base_id for q in qids]
        result = em_metrics(
            scores,
            qids,
            threshold=cfg.threshold,
            coherent_min=cfg.coherent_min,
        )
        write_json(out / "metrics.json", {**result.to_dict(), "none_reasons": none_reasons(rows)})

    return run_stage(
        "metrics",
        {"metrics": cfg},
        fn,
        root=run_root(root),
        inputs={"scores": scores_dir},
        force=force,
    )


# -- the chain ------------------------------------------------------------------------------------------
def run_chain(
    cfg: PipelineConfig,
    *,
    until: Literal["finetune", "generate", "judge", "metrics"] = "metrics",
    root: str | Path | None = None,
    force: Collection[str] = (),
    judge: Judge | None = None,
) -> ChainResult:
    """Run (or reuse) every stage up to ``until``, after checking their inputs (:func:`check_chain`).

    Args:
        cfg: the chain config.
        until: the last stage to run.
        root: run root (default ``cfg.root``, then :func:`spillover.rundir.default_root`).
        force: names of stages to recompute even if finished.
        judge: a ready judge for the judge stage (default: built from ``cfg.judge``).
    """
    unknown = set(force) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) to force: {sorted(unknown)}; valid: {list(STAGES)}")
    if until == "finetune" and cfg.finetune is None:
        raise ValueError("the config has no finetune section (add finetune: {data: ...})")
    check_chain(cfg, until, judge_section=judge is None)
    root = root if root is not None else cfg.root
    last = STAGES.index(until)
    ft = gen = jd = mt = None
    if cfg.finetune is not None:
        ft = finetune_stage(cfg.finetune, cfg.model, root=root, force="finetune" in force)
    if last >= 1:
        gen = generate_stage(cfg.generate, cfg.model, finetune_dir=ft, root=root, force="generate" in force)
    if last >= 2 and gen is not None:
        jd = judge_stage(cfg.judge, answers_dir=gen, root=root, force="judge" in force, judge=judge)
    if last >= 3 and jd is not None:
        mt = metrics_stage(cfg.metrics, scores_dir=jd, root=root, force="metrics" in force)
    return ChainResult(ft, gen, jd, mt)
