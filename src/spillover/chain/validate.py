"""``judge validate`` as a cached stage: re-judge a judged-answer CSV with the configured judge, compare.

The stage scores every answer of the CSV with the chain's judge (its call cache shared with the judge
stage, so a rerun or a resumed run repeats no call) and writes ``validation.json``
(:class:`spillover.judge.validate.JudgeAgreement`: Spearman per metric, AUROC/F1 of the misaligned label,
the EM rate under each judge, the share each leaves unscored) and ``scores.jsonl`` (the candidate's
scores, the judge stage's schema, so ``spillover metrics --scores`` reads it).

Judge prompts come from a question file whose ids match the CSV's ``question_id`` (e.g. the EM repo's
``first_plot_questions.yaml``), else from ``judge.prompts_file``; an answer whose question has neither
fails before any call.

Python::

    folder = validate_stage(cfg.judge, cfg.metrics, against="eval.csv.gz", questions="questions.yaml")
"""

from __future__ import annotations

from pathlib import Path

from spillover.chain._files import run_root, write_json
from spillover.chain.checks import check_judge
from spillover.chain.config import JudgeStageConfig, MetricsStageConfig
from spillover.chain.judging import (
    judge_identity,
    load_prompt_file,
    none_reasons,
    prompt_hashes,
    score_items,
)
from spillover.data.judged import JudgedAnswers, read_judged_csv
from spillover.data.questions import Question
from spillover.judge.base import Judge, JudgeItem
from spillover.rundir import run_stage

__all__ = ["validation_items", "validate_stage"]


def validation_items(
    judged: JudgedAnswers, cfg: JudgeStageConfig, questions: str | Path | None = None
) -> list[JudgeItem]:
    """One judge item per CSV answer, with the judge prompts of its question; checks every question has
    an aligned and a coherent prompt (:func:`check_judge`) before returning."""
    from spillover.data.questions import load_questions

    by_id = {q.id: q for q in load_questions(questions)} if questions else {}
    seen: dict[str, Question] = {}
    for qid, text in zip(judged.question_ids, judged.questions, strict=True):
        if qid not in seen:
            seen[qid] = by_id.get(qid) or Question(id=qid, paraphrases=(text,))
    check_judge(cfg, list(seen.values()))
    fallback = load_prompt_file(cfg.prompts_file) if cfg.prompts_file else {}
    items = []
    for qid, text, answer in zip(judged.question_ids, judged.questions, judged.answers, strict=True):
        own = dict(seen[qid].judge_prompts)
        prompts = dict(fallback) if cfg.override_prompts else {**fallback, **own}
        items.append(JudgeItem(qid, text, answer, prompts))
    return items


def validate_stage(
    cfg: JudgeStageConfig,
    metrics: MetricsStageConfig,
    *,
    against: str | Path,
    questions: str | Path | None = None,
    root: str | Path | None = None,
    force: bool = False,
    judge: Judge | None = None,
) -> Path:
    """Score ``against``'s answers with the configured judge (or ``judge``) and compare with its scores.

    Args:
        cfg: the judge section (backend, endpoint, prompts file, min_mass, cache).
        metrics: the misaligned label's thresholds.
        against: a judged-answer CSV (``.csv``/``.csv.gz``, see :mod:`spillover.data.judged`).
        questions: a question YAML with judge prompts for the CSV's question ids.
        judge: a ready judge instead of building one from ``cfg``.
    """
    from spillover.generate.records import write_jsonl
    from spillover.judge.validate import judge_agreement

    against = Path(against)
    judged = read_judged_csv(against)
    items = validation_items(judged, cfg, questions)
    hashes = prompt_hashes(items)

    def fn(out: Path) -> None:
        _, scores = score_items(cfg, items, judge=judge, root=root)
        rows = [
            {"question_id": it.question_id, "question": it.question, "answer": it.answer,
             "aligned": s.aligned, "coherent": s.coherent, "raw": s.raw}
            for it, s in zip(items, scores, strict=True)
        ]  # fmt: skip
        write_jsonl(out / "scores.jsonl", rows)
        report = judge_agreement(
            judged.aligned,
            judged.coherent,
            scores,
            threshold=metrics.threshold,
            coherent_min=metrics.coherent_min,
        )
        write_json(
            out / "validation.json",
            {**report.to_dict(), "candidate_none": none_reasons(rows)},
        )

    return run_stage(
        "judge_validate",
        {
            "judge": judge_identity(cfg, judge),
            "threshold": metrics.threshold,
            "coherent_min": metrics.coherent_min,
        },
        fn,
        root=run_root(root),
        inputs={"against": against, "judge_prompt_hashes": hashes},
        force=force,
        extra_manifest={"source": str(against.resolve())},
    )
