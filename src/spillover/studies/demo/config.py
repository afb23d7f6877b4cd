"""What ``spillover demo`` runs: :class:`DemoConfig` (the full demo) and ``DemoConfig.quick()`` (a first look)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from spillover.geometry.report import GeometryConfig
from spillover.organism.datasets import DATASETS
from spillover.organism.evaluate import OOD_DOMAINS, EvalConfig
from spillover.organism.inputs import OrganismSAEConfig, shipped_sae_config
from spillover.organism.pipeline import OrganismConfig
from spillover.sae.train import SAETrainConfig
from spillover.studies.dynamics import DynamicsConfig
from spillover.studies.filtering import FilterExperimentConfig

__all__ = ["DemoConfig", "SpilloverConfig"]

_FINETUNE_METHOD: Literal["full", "lora"] = "lora"
"""How the full demo fine-tunes (EM, filtering, dynamics): LoRA separates insecure code from its controls
more clearly than full fine-tuning on the default organism, and filters better (measured:
docs/results.md#organism-em, docs/results.md#filtering)."""


def _filtering_default() -> FilterExperimentConfig:
    # The paper's setting: every sample writes insecure code, so a filter cannot win by removing the task.
    # The default score, the persona-vector score and both baselines (benchmarks/mitigation_organism.py
    # runs every score at several fractions over organisms x seeds).
    return FilterExperimentConfig(
        dataset="insecure_alltask", methods=("geometry", "persona_projection", "judge", "random")
    )


def _dynamics_default() -> DynamicsConfig:
    return DynamicsConfig(finetune_method=_FINETUNE_METHOD)


@dataclass(frozen=True)
class SpilloverConfig:
    """The spillover measurement on the organism (``spillover.theory.network.measure_feature_spillover``)."""

    dataset: str = "insecure"
    """Narrow dataset fine-tuned on for a few steps."""
    steps: int = 5
    """Full-parameter SGD steps (the derivation's small-step regime)."""
    lr: float = 0.05
    """SGD step size."""
    top_k: int = 10
    """Target features of the narrow dataset."""
    n_neutral: int = 300
    """Neutral (benign, other-domain) conversations measured."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.top_k < 1 or self.n_neutral < 1:
            raise ValueError(f"invalid spillover settings: {self}")


@dataclass(frozen=True)
class DemoConfig:
    """Everything ``spillover demo`` runs. ``DemoConfig()`` is the full demo, ``DemoConfig.quick()`` the first look."""

    preset: str = "full"
    """A name recorded in the summary."""
    organism: OrganismConfig = field(default_factory=OrganismConfig)
    """The organism config; its seed is replaced by each of ``organisms``."""
    organisms: tuple[int, ...] = (0, 1, 2)
    """Organism seeds. spillover ships the default config's first seeds (``spillover.organism.zoo``), which
    install in seconds; any other seed or config trains. Every claim pools over organisms x ``seeds``."""
    retrain: bool = False
    """Train the organisms from scratch even where spillover ships them (each into its own run folder)."""
    sae: OrganismSAEConfig = field(default_factory=shipped_sae_config)
    """The organism's SAEs: the shipped organisms' config (installed, not trained; timing:
    docs/results.md#demo-timing)."""
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    """The geometry of every dataset vs the toxic features."""
    em_datasets: tuple[str, ...] = ("insecure", "secure", "edu_insecure", "bad_medical", "good_medical")
    """Datasets fine-tuned and evaluated for EM."""
    seeds: tuple[int, ...] = (0,)
    """Fine-tuning / evaluation seeds (EM, filtering and dynamics)."""
    finetune_method: Literal["full", "lora"] = _FINETUNE_METHOD
    """How the EM datasets are fine-tuned (the filtering and dynamics configs carry their own)."""
    finetune_steps: int | None = None
    """Override the organism recipe's optimizer steps (None: the recipe's, 120 LoRA / 240 full)."""
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(n_per_domain=100))
    """How the EM fine-tunes are evaluated (the sampling seed is replaced by each run's seed)."""
    spillover: SpilloverConfig | None = field(default_factory=SpilloverConfig)
    """The spillover measurement (None skips it)."""
    filtering: FilterExperimentConfig | None = field(default_factory=_filtering_default)
    """The filtering experiment (None skips it; its seeds are replaced by ``seeds``)."""
    dynamics: DynamicsConfig | None = field(default_factory=_dynamics_default)
    """The training dynamics (None skips them; their seeds are replaced by ``seeds``)."""
    toxic_domains: Literal["ood", "all"] = "ood"
    """Domains of the toxic/benign corpora (``spillover.organism.inputs.organism_inputs``)."""

    def __post_init__(self) -> None:
        unknown = [d for d in self.em_datasets if d not in DATASETS]
        if unknown:
            raise ValueError(f"unknown organism datasets {unknown}; built-in: {sorted(DATASETS)}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if not self.organisms or len(set(self.organisms)) != len(self.organisms):
            raise ValueError(f"organisms must name one or more distinct seeds, got {self.organisms}")

    @classmethod
    def quick(cls) -> DemoConfig:
        """A tiny organism, small SAE, two EM datasets, three filters (measured: docs/results.md#demo-timing)."""
        eval_cfg = EvalConfig(n_per_domain=50, domains=(*OOD_DOMAINS, "code", "medical"))
        # OrganismConfig.quick() pretrained longer, so that most answers are coherent
        # (measured: docs/results.md#organism-design).
        organism = replace(
            OrganismConfig.quick(), pretrain=replace(OrganismConfig.quick().pretrain, steps=300, warmup=20)
        )
        return cls(
            preset="quick",
            organism=organism,
            organisms=(0,),
            sae=OrganismSAEConfig(
                sae=SAETrainConfig(d_sae=256, k=8, training_tokens=200_000, batch_size=512), n_documents=800
            ),
            geometry=GeometryConfig(n_null=200, n_permutations=1000),
            em_datasets=("insecure", "secure"),
            finetune_method="full",  # the tiny organism's setting (measured: docs/results.md#organism-em)
            finetune_steps=40,
            eval=eval_cfg,
            spillover=SpilloverConfig(n_neutral=100),
            filtering=FilterExperimentConfig(
                methods=("geometry", "judge", "random"), finetune_steps=40, eval=eval_cfg
            ),
            dynamics=DynamicsConfig(checkpoint_every=10, finetune_steps=40, n_prompts=60, n_eval=25),
        )
