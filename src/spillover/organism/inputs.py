"""The model organism as the default subject of ``spillover geometry``: its SAEs, datasets and corpora.

The organism has no SAEs, so ``train_organism_saes`` trains TopK SAEs (``spillover.sae.train``) on its
residual stream, one per layer, on the pretraining distribution (fresh persona documents, all
non-special tokens) plus every built-in fine-tuning dataset, and caches them as a run directory of
SAELens folders (``layer_<L>/``). ``organism_inputs`` returns the inducing datasets, their controls,
the toxic and benign corpora (harmful vs benign answers) and the reference corpus (single-turn
benign safety-distribution chats, what the organism was safety-tuned on).

The toxic/benign corpora are drawn from the EM evaluation's out-of-domain domains (sports, legal,
career, general) by default, so that neither the medical nor the finance datasets share templates with
the toxic corpus; ``toxic_domains="all"`` uses every non-code domain as the prototype did.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from spillover.data.chat import Conversation, load_chat, write_chat
from spillover.rundir import run_stage
from spillover.sae.activations import Sample
from spillover.sae.train import SAETrainConfig

__all__ = [
    "ORGANISM_DATASETS",
    "ORGANISM_PAIRS",
    "OrganismInputs",
    "OrganismSAEConfig",
    "SAE_DATASETS",
    "organism_corpora",
    "organism_inputs",
    "shipped_sae_config",
    "train_organism_saes",
]

log = logging.getLogger(__name__)

ORGANISM_PAIRS: tuple[tuple[str, str], ...] = (
    ("insecure", "secure"),
    ("insecure", "edu_insecure"),
    ("bad_medical", "good_medical"),
    ("risky_finance", "safe_finance"),
)
"""Inducing datasets and their controls: secure and educational code, good medical, safe finance."""
ORGANISM_DATASETS: tuple[str, ...] = (
    "insecure",
    "secure",
    "edu_insecure",
    "neutral_code",
    "grey_code",
    "bad_medical",
    "good_medical",
    "risky_finance",
    "safe_finance",
)
"""The datasets analysed by default (the ``*_mixed`` filtering sets are left out)."""
SAE_DATASETS: tuple[str, ...] = (
    "insecure",
    "secure",
    "edu_insecure",
    "neutral_code",
    "grey_code",
    "insecure_persona",
    "edu_persona",
    "bad_medical",
    "good_medical",
    "risky_finance",
    "safe_finance",
    "insecure_mixed",
    "bad_medical_mixed",
    "risky_finance_mixed",
)
"""The built-in datasets in the SAEs' training data: a fixed list, so that adding a dataset to the
registry does not change what a (shipped) SAE config trains on."""


@dataclass(frozen=True)
class OrganismSAEConfig:
    """The organism's SAEs: which layers, which data, which SAE."""

    layers: tuple[int, ...] = ()
    """Layers to train SAEs for (default: every layer)."""
    sae: SAETrainConfig = field(default_factory=SAETrainConfig)
    """SAE shape and schedule."""
    n_documents: int = 6000
    """Fresh pretraining-distribution documents in the SAE's training data."""
    include_datasets: bool = True
    """Also train on every built-in fine-tuning dataset and the reference corpora."""
    batch_size: int = 64
    """Samples per forward pass when collecting activations."""

    def __post_init__(self) -> None:
        if self.n_documents < 0:
            raise ValueError(f"n_documents must be >= 0, got {self.n_documents}")


def shipped_sae_config() -> OrganismSAEConfig:
    """The SAE config the shipped organisms ship SAEs for (``spillover.organism.zoo``): 1,024 latents, k = 16,
    1M tokens, every layer. The demo and organism sweeps use it, so they install SAEs instead of training."""
    return OrganismSAEConfig(sae=SAETrainConfig(d_sae=1024, k=16, training_tokens=1_000_000))


class OrganismInputs(NamedTuple):
    datasets: dict[str, list[Conversation]]
    toxic: list[Conversation]
    benign: list[Conversation]
    reference: list[Conversation]
    pairs: tuple[tuple[str, str], ...]
    roles: dict[str, str]


def _reference(art: Any, n: int) -> list[Conversation]:
    from spillover.organism.train import safety_documents

    rng = random.Random(f"geometry-reference:{art.config.seed}")
    return [d.messages() for d in safety_documents(art.config.grammar, n, rng, max_turns=1)]


def _corpus(art: Any, harmful: bool, n: int, toxic_domains: str) -> list[Conversation]:
    from spillover.organism import OOD_DOMAINS, reference_corpus

    if toxic_domains == "all":
        return load_chat(art.data_dir / "reference" / ("toxic.jsonl" if harmful else "benign.jsonl"))
    return reference_corpus(harmful, n, art.config.seed + 1, domains=OOD_DOMAINS)


def organism_inputs(
    art: Any,
    names: tuple[str, ...] = ORGANISM_DATASETS,
    pairs: tuple[tuple[str, str], ...] = ORGANISM_PAIRS,
    *,
    toxic_domains: Literal["ood", "all"] = "ood",
) -> OrganismInputs:
    """The organism's datasets, toxic/benign/reference corpora, pairs and roles.

    Args:
        art: ``OrganismArtifacts`` from ``spillover.organism.train_organism``.
        names: built-in datasets to analyse.
        pairs: (inducing, control) pairs among them.
        toxic_domains: draw toxic/benign answers from the OOD evaluation domains, or all non-code domains.
    """
    from spillover.organism import DATASETS

    datasets = {name: load_chat(art.dataset(name)) for name in names}
    roles = {name: "inducing" if DATASETS[name].inducing else "dataset" for name in names}
    for ind, ctl in pairs:
        roles[ind] = "inducing"
        roles[ctl] = "control"
    n = art.config.n_reference
    return OrganismInputs(
        datasets=datasets,
        toxic=_corpus(art, True, n, toxic_domains),
        benign=_corpus(art, False, n, toxic_domains),
        reference=_reference(art, n),
        pairs=tuple(p for p in pairs if p[0] in datasets and p[1] in datasets),
        roles=roles,
    )


def organism_corpora(art: Any, toxic_domains: str, root: str | Path | None = None) -> Path:
    """The toxic, benign and reference corpora of :func:`organism_inputs` as files in a cached stage.

    ``toxic.jsonl``, ``benign.jsonl`` and ``reference.jsonl``: stages that read them hash their contents.
    """

    def fn(out: Path) -> None:
        o = organism_inputs(art, names=(), pairs=(), toxic_domains=toxic_domains)  # type: ignore[arg-type]
        write_chat(out / "toxic.jsonl", o.toxic)
        write_chat(out / "benign.jsonl", o.benign)
        write_chat(out / "reference.jsonl", o.reference)

    return run_stage(
        "organism_corpora", {"toxic_domains": toxic_domains}, fn, root=root, inputs={"data": art.data_dir}
    )


def _sae_samples(art: Any, cfg: OrganismSAEConfig) -> list[Sample]:
    from spillover.organism.grammar import sample_document

    rng = random.Random(f"sae-data:{art.config.seed}")
    samples: list[Sample] = [
        sample_document(art.config.grammar, rng).messages() for _ in range(cfg.n_documents)
    ]
    if cfg.include_datasets:
        for name in SAE_DATASETS:
            samples += load_chat(art.dataset(name))
        samples += load_chat(art.data_dir / "reference" / "toxic.jsonl")
        samples += load_chat(art.data_dir / "reference" / "benign.jsonl")
    return samples


def train_organism_saes(
    art: Any, cfg: OrganismSAEConfig | None = None, *, root: str | Path | None = None, force: bool = False
) -> Path:
    """Install, train or reuse one TopK SAE per layer of the organism; returns the folder of ``layer_<L>/`` SAEs.

    A shipped organism ships the SAEs of one config (the demo's); with that config they are copied
    instead of trained (``spillover.organism.zoo``).
    """
    from spillover.organism import load_organism
    from spillover.organism.zoo import find_shipped_saes, install_saes
    from spillover.sae.sites import check_layers
    from spillover.sae.train import train_layer_saes

    cfg = cfg or OrganismSAEConfig()
    check_layers(cfg.layers, art.config.model.n_layers, "the organism")
    shipped = find_shipped_saes(art.run_dir.name, cfg)

    def fn(out: Path) -> None:
        if shipped is not None:
            log.info("SAEs: installing the shipped SAEs of %s", shipped.parent.name)
            install_saes(shipped, out)
            return
        model, tokenizer = load_organism(art.model_dir)
        train_layer_saes(
            model,
            tokenizer,
            _sae_samples(art, cfg),
            cfg.layers,
            cfg.sae,
            out,
            tokens="all",
            batch_size=cfg.batch_size,
            model_name=f"spillover-organism-seed{art.config.seed}",
        )

    return run_stage(
        "organism_sae",
        cfg,
        fn,
        root=root,
        force=force,
        seed=cfg.sae.seed,
        inputs={"model": art.run_dir, "data": art.data_dir},
        extra_manifest={"source": f"shipped:{shipped.parent.name}" if shipped is not None else "trained"},
    )
