"""Checks of the chain's inputs that run before any stage, so a bad path or option fails in seconds.

:func:`run_chain <spillover.chain.stages.run_chain>` calls :func:`check_chain` first: a missing question
file or judge prompts file, an unknown judge backend or question id, a checkpoint that fine-tuning will
not save, or a model folder that is not there is reported before the model is loaded or fine-tuned,
naming the config key and the value.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence

from spillover.chain.config import (
    STAGES,
    FinetuneStageConfig,
    GenerateStageConfig,
    JudgeStageConfig,
    PipelineConfig,
)
from spillover.data.fetch import resolve_data
from spillover.data.questions import Question
from spillover.judge.prompts import METRICS
from spillover.models.sources import check_model_source

__all__ = ["check_chain", "check_generate", "check_judge"]


def check_generate(cfg: GenerateStageConfig) -> list[Question]:
    """Check the generate section's question file, question ids and backend; returns the questions it
    will sample."""
    from spillover.data.questions import load_questions
    from spillover.generate.records import sampling_plan

    qpath = resolve_data(cfg.questions)
    if not cfg.questions or not qpath.is_file():
        raise FileNotFoundError(f"generate.questions: question file {cfg.questions!r} does not exist")
    questions = load_questions(qpath)
    plan = sampling_plan(
        questions, samples_per_paraphrase=cfg.samples_per_paraphrase, question_ids=cfg.question_ids
    )
    if cfg.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ImportError(
            "generate.backend=vllm needs vLLM: pip install 'spillover[vllm]' on a CUDA machine "
            "(or use generate.backend=hf)"
        )
    used = {r.question_id for r in plan}
    return [q for q in questions if q.id in used]


def _check_checkpoint(checkpoint: str | None, finetune: FinetuneStageConfig | None) -> None:
    """A ``generate.checkpoint`` must be one that the chain's fine-tuning will save."""
    if checkpoint is None:
        return
    if finetune is None:
        raise ValueError(f"generate.checkpoint={checkpoint!r} needs a finetune section")
    every = finetune.checkpoint_every
    if every is None:
        raise ValueError(
            f"generate.checkpoint={checkpoint!r}: fine-tuning saves no checkpoints; set finetune.checkpoint_every"
        )
    step = re.fullmatch(r"step-(\d+)", checkpoint)
    if step is None or int(step.group(1)) % every:
        raise ValueError(
            f"generate.checkpoint={checkpoint!r}: fine-tuning saves step-N folders with N a multiple of "
            f"finetune.checkpoint_every={every}"
        )


def check_judge(cfg: JudgeStageConfig, questions: Sequence[Question] = ()) -> None:
    """Check the judge section: the backend exists, its model and prompts file are there, and every
    question in ``questions`` gets an aligned and a coherent prompt (the API and local judges need them)."""
    from spillover.chain.judging import load_prompt_file

    if cfg.backend not in ("openai", "local"):
        from spillover.judge.base import available_judges

        known = available_judges()
        if cfg.backend not in known:
            raise ValueError(f"judge.backend: unknown judge {cfg.backend!r}; available: {known}")
        return
    if cfg.backend == "local":
        check_model_source(cfg.local.model, "judge.local.model.source")
    fallback = load_prompt_file(cfg.prompts_file) if cfg.prompts_file else {}
    for q in questions:
        prompts = fallback if cfg.override_prompts else {**fallback, **q.judge_prompts}
        missing = [m for m in METRICS if not prompts.get(m)]
        if missing:
            raise ValueError(
                f"question {q.id!r} has no {missing[0]!r} judge prompt; add judge_prompts to the question "
                "file or give judge.prompts_file (a YAML with aligned/coherent templates)"
            )


def check_chain(cfg: PipelineConfig, until: str = "metrics", *, judge_section: bool = True) -> None:
    """Check every input the stages up to ``until`` read, before any of them runs.

    ``judge_section=False`` leaves the judge section unchecked (for a chain given a ready judge).
    """
    if until not in STAGES:
        raise ValueError(f"until must be one of {STAGES}, got {until!r}")
    last = STAGES.index(until)
    check_model_source(cfg.model)
    if cfg.finetune is not None and not resolve_data(cfg.finetune.data).is_file():
        raise FileNotFoundError(f"finetune.data: {cfg.finetune.data} does not exist")
    if last >= STAGES.index("generate"):
        questions = check_generate(cfg.generate)
        _check_checkpoint(cfg.generate.checkpoint, cfg.finetune)
        if judge_section and last >= STAGES.index("judge"):
            check_judge(cfg.judge, questions)
