"""The built-in sweep cell pipelines share this: the filter a cell applies, and the stage that applies it.

``organism`` (:mod:`spillover.pipeline.organism_cells`, the built-in model organism, CPU-sized)::

    organism -> [sae -> corpora -> filter_scores] -> filter -> finetune -> evaluate (metrics.json)
                [sae -> corpora -> geometry]                                (per-dataset geometry score)

``em`` (:mod:`spillover.pipeline.em_cells`, a real chat model and the ``spillover.chain.stages`` chain;
GPUs for fine-tuning and generation)::

    [filter_scores] -> filter -> finetune -> generate -> judge -> metrics
    baseline: generate -> judge -> metrics of the base model (once per model)

Stages in brackets run only when a cell needs them (a scored filter, ``geometry: {...}``). Every stage
is keyed by exactly the config it depends on, so when cells are merged into one graph the organism is
trained once, each dataset is scored once for all seeds, methods and fractions, and the base model is
evaluated once. Each stage function has the :class:`spillover.pipeline.graph.StageFn` signature and
calls the public stage functions of the organism, geometry, filtering, studies and chain packages
(which cache themselves with ``run_stage``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from spillover.filtering.scores import check_toxic_k
from spillover.rundir import run_stage

__all__ = ["SCORED_FILTERS", "CellFilter", "filter_stage", "judge_problems"]

SCORED_FILTERS = ("geometry", "toxic_activation", "toxic_subspace", "persona_projection", "judge")
"""Filter methods that rank samples by a score (a ``filter_scores`` stage computes it)."""


@dataclass(frozen=True)
class CellFilter:
    """Which training samples a cell removes before fine-tuning."""

    method: str = "none"
    """``none``, ``random``, or a score: ``geometry`` (nearest-toxic cosine, the default score),
    ``toxic_activation``, ``toxic_subspace``, ``persona_projection``, ``judge``."""
    fraction: float = 0.5
    """Share of samples removed."""
    seed: int | None = None
    """Seed of the random split (None: the cell's seed)."""
    judge: str = "organism_rule"
    """Registered judge for the ``judge`` score."""
    toxic_k: int | None = None
    """Toxic latents for the geometry scores (None: the geometry default)."""
    tokens: Literal["assistant", "all"] = "assistant"
    sae: str | None = None
    """``em`` only: local SAELens folder of the layer that scores samples."""
    toxic: str | None = None
    """``em`` only: toxic reference conversations (chat JSONL)."""
    benign: str | None = None
    """``em`` only: benign reference conversations (chat JSONL)."""

    def __post_init__(self) -> None:
        valid = ["none", "random", *SCORED_FILTERS]
        if self.method not in valid:
            raise ValueError(f"filter.method {self.method!r} is not one of {valid}")
        if not 0 < self.fraction < 1:
            raise ValueError(f"filter.fraction must be in (0, 1), got {self.fraction}")
        check_toxic_k(self.toxic_k)

    @property
    def scored(self) -> bool:
        return self.method in SCORED_FILTERS

    def split_seed(self, cell_seed: int) -> int | None:
        """The random split's seed (``seed``, else the cell's); None for a scored split, which has none."""
        if self.method != "random":
            return None
        return self.seed if self.seed is not None else cell_seed


def filter_stage(data: Path, scores: Path | None, config: dict[str, Any], root: Path) -> Path:
    """The kept / removed split of ``data`` by ``config``'s method, fraction and seed (``kept.jsonl``).

    Args:
        data: the training set (chat JSONL).
        scores: a ``filter_scores`` stage folder (scored methods only).
        config: has ``method``, ``fraction`` and ``seed``.
        root: run root.
    """
    from spillover.data.chat import load_chat
    from spillover.filtering.sets import apply_filter, read_scores_json

    def fn(out: Path) -> None:
        convs = load_chat(data)
        values = read_scores_json(scores) if scores is not None else None
        apply_filter(out, convs, config["method"], config["fraction"], scores=values, seed=config["seed"])

    return run_stage(
        "filter",
        {k: config[k] for k in ("method", "fraction", "seed")},
        fn,
        root=root,
        inputs={"data": data, **({"scores": scores} if scores else {})},
    )


def judge_problems(judges: Mapping[str, str]) -> list[str]:
    """One ``key: unknown judge ...`` line per judge name that is not registered (``""`` names none)."""
    named = {key: name for key, name in judges.items() if name}
    if not named:
        return []
    from spillover.judge.base import available_judges

    known = available_judges()
    return [
        f"{key}: unknown judge {name!r}; available: {known}"
        for key, name in named.items()
        if name not in known
    ]
