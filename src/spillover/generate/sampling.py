"""How answers are sampled: the settings every sampler in spillover shares."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SamplingConfig"]


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
