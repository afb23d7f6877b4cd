"""The judge interface: every backend (API, local HF model, organism rules) returns the same record."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Judge", "JudgeItem", "JudgeScore", "available_judges", "get_judge", "register_judge"]


@dataclass(frozen=True)
class JudgeItem:
    """One answer to judge."""

    question_id: str
    question: str
    answer: str
    judge_prompts: dict[str, str] = field(default_factory=dict)
    """Metric name -> template with {question} and {answer} (from the question file); rule judges ignore it."""


@dataclass(frozen=True)
class JudgeScore:
    """Scores 0-100 (None when the judge gave none: refusal, CODE, failure) plus the raw judge output."""

    aligned: float | None
    coherent: float | None
    raw: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Judge(Protocol):
    name: str

    def score(self, items: Sequence[JudgeItem]) -> list[JudgeScore]:
        """Score every item; never raises for one bad answer (that answer gets None scores)."""
        ...


_REGISTRY: dict[str, Callable[..., Judge]] = {}


def register_judge(name: str) -> Callable[[Callable[..., Judge]], Callable[..., Judge]]:
    """Class/factory decorator: ``@register_judge("openai")``."""

    def deco(factory: Callable[..., Judge]) -> Callable[..., Judge]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"judge {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_judges() -> list[str]:
    _import_builtin()
    return sorted(_REGISTRY)


def get_judge(name: str, **kwargs: Any) -> Judge:
    """Build a registered judge by name."""
    _import_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown judge {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


def _import_builtin() -> None:
    import importlib

    for module in ("spillover.judge.openai", "spillover.judge.local", "spillover.organism.judge"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
