"""How answers are sampled: the settings every sampler in spillover shares."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, TypeVar

__all__ = ["SamplingConfig", "with_overrides"]


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings, nested as ``sampling`` in every config that generates answers.

    The defaults are the EM evaluation's (temperature 1, no nucleus cut); each config states the
    answer length it needs by overriding ``max_new_tokens``.
    """

    temperature: float = 1.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    max_new_tokens: int = 600
    """Answer length limit, in tokens."""
    seed: int = 0
    """Seeds the sampler once before the first batch."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


S = TypeVar("S", bound=SamplingConfig)


def with_overrides(
    sampling: S,
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
    seed: int | None = None,
) -> S:
    """``sampling`` with every setting given here (not None) replacing its field, validated again.

    The samplers take a ``sampling`` config and, for callers that pass settings one by one, the
    single keywords; this merges the two (the keywords win).
    """
    given: dict[str, Any] = {
        name: value
        for name, value in (
            ("temperature", temperature),
            ("top_p", top_p),
            ("max_new_tokens", max_new_tokens),
            ("seed", seed),
        )
        if value is not None
    }
    return replace(sampling, **given) if given else sampling
