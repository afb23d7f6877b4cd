"""Metrics of judged answers that other tools wrote (EM repo / model-organisms CSVs), as a cached stage.

The folder holds the same ``metrics.json`` as the chain's metrics stage (:func:`metrics_stage`), so
tables, reports and comparisons read both alike; the stage's input is the CSV's content.

Python::

    folder = csv_metrics_stage(MetricsStageConfig(), csv_path="eval_result.csv.gz")
"""

from __future__ import annotations

from pathlib import Path

from spillover.chain._files import run_root, write_json
from spillover.chain.config import MetricsStageConfig
from spillover.chain.judging import none_reasons
from spillover.data.judged import JudgedAnswers, read_judged_csv
from spillover.judge.base import JudgeScore
from spillover.metrics import EMMetrics, em_metrics
from spillover.rundir import run_stage

__all__ = ["csv_metrics_stage", "judged_metrics"]


def judged_metrics(judged: JudgedAnswers, cfg: MetricsStageConfig) -> EMMetrics:
    """EM metrics of a read CSV, per question (grouped as ``cfg.group_by``) and pooled."""
    from spillover.data.questions import Question

    scores = [JudgeScore(a, c) for a, c in zip(judged.aligned, judged.coherent, strict=True)]
    qids = list(judged.question_ids)
    if cfg.group_by == "base_id":
        qids = [Question(id=q, paraphrases=("",)).base_id for q in qids]
    return em_metrics(
        scores,
        qids,
        threshold=cfg.threshold,
        coherent_min=cfg.coherent_min,
        extra_scores=judged.extra,
    )


def csv_metrics_stage(
    cfg: MetricsStageConfig,
    *,
    csv_path: str | Path,
    root: str | Path | None = None,
    force: bool = False,
    judged: JudgedAnswers | None = None,
) -> Path:
    """Read a judged-answer CSV (``.csv``/``.csv.gz``) and write its ``metrics.json`` in a metrics folder.

    The CSV is read (and a malformed one rejected, naming file, line and column) before anything is
    written. ``none_reasons`` counts every missing score as ``no_score``: a CSV keeps no raw judge output.
    """
    csv_path = Path(csv_path)
    if judged is None:  # callers that checked several files first pass what they read
        judged = read_judged_csv(csv_path)

    def fn(out: Path) -> None:
        result = judged_metrics(judged, cfg)
        rows = [{"aligned": a, "coherent": c} for a, c in zip(judged.aligned, judged.coherent, strict=True)]
        write_json(out / "metrics.json", {**result.to_dict(), "none_reasons": none_reasons(rows)})

    return run_stage(
        "metrics",
        {"metrics": cfg},
        fn,
        root=run_root(root),
        inputs={"scores_csv": csv_path},
        force=force,
        extra_manifest={"source": str(csv_path.resolve())},
    )
