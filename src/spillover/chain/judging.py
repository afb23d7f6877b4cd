"""The chain's judge and rescore stages: scores 0-100 for aligned/coherent, cached and resumable.

The judge stage scores every answer of a generate stage (``scores.jsonl``: the answer records plus
``aligned``, ``coherent`` and the judge's raw outputs); finished calls are stored in a call cache shared
under the run root (:func:`judge_cache_path`), so a killed run resumes without repeating them. The rescore
stage recomputes every score from the stored raw outputs with another ``min_mass``, calling no judge.

Python::

    judged = judge_stage(cfg.judge, answers_dir=generate_dir)
    strict = rescore_stage(judged, min_mass=0.5)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spillover.chain._files import run_root, write_json
from spillover.chain.config import JudgeStageConfig
from spillover.judge.aggregate import MIN_NUMERIC_MASS
from spillover.judge.base import Judge, JudgeItem, JudgeScore
from spillover.judge.prompts import METRICS, prompt_hash, score_from_raw
from spillover.rundir import run_stage

__all__ = [
    "build_judge",
    "judge_cache_path",
    "judge_items",
    "judge_identity",
    "judge_stage",
    "load_prompt_file",
    "none_reasons",
    "prompt_hashes",
    "read_scores",
    "rescore_stage",
    "score_items",
]


def judge_cache_path(root: str | Path | None = None) -> Path:
    """The judge call cache shared by all judge stages under a run root."""
    return run_root(root) / "judge-cache" / "judge-cache.sqlite"


def build_judge(cfg: JudgeStageConfig, *, cache: Any = None) -> Judge:
    """The judge a stage config names, wired to ``cache`` (a JudgeCache) where the backend uses one."""
    # The built-in backends are constructed directly: the registry lookup would import every plug-in.
    if cfg.backend == "openai":
        from spillover.judge.openai import OpenAIJudge

        return OpenAIJudge(cfg.openai, cache=cache, min_mass=cfg.min_mass)
    if cfg.backend == "local":
        from spillover.judge.local import LocalJudge

        return LocalJudge(cfg.local, cache=cache, min_mass=cfg.min_mass)
    from spillover.judge.base import get_judge

    return get_judge(cfg.backend, **cfg.options)


def judge_identity(cfg: JudgeStageConfig, judge: Judge | None) -> dict[str, Any]:
    """The part of the judge config that changes scores (operational settings of other backends excluded)."""
    ident: dict[str, Any] = {
        "backend": cfg.backend,
        "min_mass": cfg.min_mass,
        "prompts_file": cfg.prompts_file,
        "override_prompts": cfg.override_prompts,
    }
    if judge is not None:
        describe = getattr(judge, "describe", None)
        ident["instance"] = describe() if callable(describe) else getattr(judge, "name", type(judge).__name__)
    elif cfg.backend == "openai":
        ident["openai"] = cfg.openai
    elif cfg.backend == "local":
        ident["local"] = cfg.local
    else:
        ident["options"] = cfg.options
    return ident


def load_prompt_file(path: str) -> dict[str, str]:
    """A judge prompts file: metric name (aligned, coherent) -> template with an ``{answer}`` placeholder."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"judge.prompts_file: {path} does not exist")
    data = yaml.safe_load(file.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(
            f"{path}: expected a mapping of metric name (aligned, coherent) to a prompt template"
        )
    for metric, template in data.items():
        if "{answer}" not in template:
            raise ValueError(f"{path}: the {metric!r} template has no {{answer}} placeholder")
    return {str(k): v for k, v in data.items()}


def judge_items(answers_dir: Path, cfg: JudgeStageConfig) -> tuple[list[Any], list[JudgeItem]]:
    """The answer records of a generate stage and the judge items (with judge prompts) for them."""
    from spillover.data.questions import load_questions
    from spillover.generate.records import read_answers

    records = read_answers(answers_dir)
    qfile = Path(answers_dir) / "questions.yaml"
    prompts_by_q = {q.id: dict(q.judge_prompts) for q in load_questions(qfile)} if qfile.is_file() else {}
    fallback = load_prompt_file(cfg.prompts_file) if cfg.prompts_file else {}
    items = []
    for r in records:
        own = prompts_by_q.get(r.question_id, {})
        prompts = dict(fallback) if cfg.override_prompts else {**fallback, **own}
        items.append(JudgeItem(r.question_id, r.question, r.answer, prompts))
    return records, items


def _score_rows(records: Sequence[Any], scores: Sequence[JudgeScore]) -> list[dict[str, Any]]:
    return [
        {**r.to_dict(), "aligned": s.aligned, "coherent": s.coherent, "raw": s.raw}
        for r, s in zip(records, scores, strict=True)
    ]


def none_reasons(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per metric: how many scores are None because the call failed vs. because the judge gave no number."""
    out: dict[str, dict[str, int]] = {}
    for metric in METRICS:
        counts: Counter[str] = Counter()
        for row in rows:
            if row.get(metric) is not None:
                continue
            raw = (row.get("raw") or {}).get(metric)
            if isinstance(raw, Mapping) and raw.get("error") is not None:
                counts["judge_failed"] += 1
            elif isinstance(raw, Mapping) and raw.get("top_logprobs") is not None:
                counts["low_numeric_mass"] += 1
            else:
                counts["no_score"] += 1
        out[metric] = dict(counts)
    return out


def prompt_hashes(items: Sequence[JudgeItem]) -> dict[str, list[str]]:
    """The distinct judge-prompt hashes per metric (recorded in a stage's manifest)."""
    return {
        m: sorted({prompt_hash(it.judge_prompts[m]) for it in items if m in it.judge_prompts})
        for m in METRICS
    }


def score_items(
    cfg: JudgeStageConfig,
    items: Sequence[JudgeItem],
    *,
    judge: Judge | None = None,
    cache_path: Path | None = None,
    root: str | Path | None = None,
) -> tuple[Judge, list[JudgeScore]]:
    """Score ``items`` with ``judge``, or with one built from ``cfg`` behind the call cache (when
    ``cfg.cache``); returns the judge used and one score per item."""
    from spillover.judge.cache import JudgeCache

    cache = JudgeCache(cache_path or judge_cache_path(root)) if cfg.cache and judge is None else None
    try:
        the_judge = judge if judge is not None else build_judge(cfg, cache=cache)
        scores = list(the_judge.score(items))
    finally:
        if cache is not None:
            cache.close()
    if len(scores) != len(items):
        raise RuntimeError(f"judge {the_judge.name!r} returned {len(scores)} scores for {len(items)} answers")
    return the_judge, scores


def judge_stage(
    cfg: JudgeStageConfig,
    *,
    answers_dir: Path,
    root: str | Path | None = None,
    force: bool = False,
    judge: Judge | None = None,
    cache_path: Path | None = None,
) -> Path:
    """Score every answer of a generate stage; writes ``scores.jsonl`` (answers + scores + raw outputs).

    Args:
        cfg: judge settings.
        answers_dir: a finished generate stage (or any folder with answers.jsonl and questions.yaml).
        judge: a ready judge instead of building one from ``cfg`` (e.g. a LocalJudge on a loaded model);
            it keeps its own cache (or none).
        cache_path: the call cache (default :func:`judge_cache_path`); ignored when ``cfg.cache`` is off.
    """
    from spillover.generate.records import write_jsonl

    answers_dir = Path(answers_dir)
    records, items = judge_items(answers_dir, cfg)
    hashes = prompt_hashes(items)
    ident = judge_identity(cfg, judge)
    inputs: dict[str, Any] = {"answers": answers_dir}
    if cfg.prompts_file:
        inputs["prompts_file"] = Path(cfg.prompts_file)

    def fn(out: Path) -> None:
        the_judge, scores = score_items(cfg, items, judge=judge, cache_path=cache_path, root=root)
        rows = _score_rows(records, scores)
        write_jsonl(out / "scores.jsonl", rows)
        stats = getattr(the_judge, "last_stats", None)
        write_json(
            out / "summary.json",
            {
                "n_answers": len(rows),
                "none": none_reasons(rows),
                "calls": stats._asdict() if stats is not None else None,
            },
        )

    describe = getattr(judge, "describe", None) if judge is not None else None
    manifest_judge = describe() if callable(describe) else ident
    extra = {"judge": manifest_judge, "judge_prompt_hashes": hashes}
    return run_stage(
        "judge", ident, fn, root=run_root(root), inputs=inputs, force=force, extra_manifest=extra
    )


def read_scores(path: str | Path) -> list[dict[str, Any]]:
    """The rows of ``scores.jsonl`` (a judge or rescore stage folder, or the file)."""
    from spillover.generate.records import read_jsonl

    path = Path(path)
    return read_jsonl(path / "scores.jsonl" if path.is_dir() else path)


def rescore_stage(
    scores_dir: Path,
    *,
    min_mass: float = MIN_NUMERIC_MASS,
    root: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Recompute every score from the stored raw judge outputs (no judge call) with ``min_mass``.

    Writes ``scores.jsonl`` (same schema as the judge stage) and ``summary.json`` with how many scores
    changed. Rows without raw logprobs (rule judges) keep their scores.
    """
    from spillover.generate.records import write_jsonl

    scores_dir = Path(scores_dir)
    rows = read_scores(scores_dir)

    def fn(out: Path) -> None:
        new_rows = []
        changed = 0
        for row in rows:
            new = dict(row)
            raw = row.get("raw") or {}
            for metric in METRICS:
                metric_raw = raw.get(metric)
                if isinstance(metric_raw, Mapping) and (
                    "top_logprobs" in metric_raw or "error" in metric_raw
                ):
                    new[metric] = score_from_raw(metric_raw, min_mass)
                changed += new[metric] != row.get(metric)
            new_rows.append(new)
        write_jsonl(out / "scores.jsonl", new_rows)
        write_json(
            out / "summary.json",
            {"n_answers": len(rows), "scores_changed": changed, "none": none_reasons(new_rows)},
        )

    return run_stage(
        "rescore",
        {"min_mass": min_mass},
        fn,
        root=run_root(root),
        inputs={"scores": scores_dir},
        force=force,
    )
