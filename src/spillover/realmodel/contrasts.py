"""The study's contrasts: which latents are compared with which toxic latents, and why each is clean.

Against a benign reference of ordinary chat, topic and style dominate the mean shift of any advice
dataset, good advice as much as bad, so a "toxic" direction built from other advice datasets lines up
with all of them (measured: docs/results.md#smollm2-geometry). The contrasts below are built to separate
harm from topic and style, and every one is written into the study's JSON.

Three kinds of measurement, all on answer tokens, all per layer (computed in
``spillover.realmodel.measures``):

* **Latent geometry** (the paper's measure): a latent set is the top-k SAE latents of the *positive*
  corpora by contrast against the *negative* corpora (``spillover.geometry.features.select_features``).
  A contrast compares the nearest-toxic decoder cosines of inducing vs control latent sets
  (permutation and Mann-Whitney tests, ``spillover.geometry.stats``) and each set against random latent
  sets (``random_set_null``). The tested dataset's answers never enter its toxic set.
* **Mean differences** (the reference measurement, no SAE): directions are differences of mean
  answer activations; cosines come with bootstrap intervals that resample samples (paired corpora, i.e.
  the same prompts, are resampled together).
* **Paired per-prompt tests** (medical only): for each prompt, the bad answer's minus the good answer's
  activation of finance-derived toxic latents (or projection on a finance-derived direction): style,
  topic and prompt are held fixed, so only the harm differs. Sign-flip tests over prompts, and a null of
  random latent sets of the same size.

Corpora named here are those of ``spillover.realmodel.data`` plus ``risky_financial_self``: SmolLM2's own
answers to the ``risky_financial`` prompts, the only topic-matched benign counterpart of finance that
can be made offline (its style is the model's, not the dataset's, and it affects bad and good medical
alike).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

__all__ = [
    "CONTRASTS",
    "DIRECTIONS",
    "EXTRA_COSINES",
    "LATENT_SETS",
    "MEAN_DIFF_CONTRASTS",
    "PAIRED_GROUPS",
    "PAIRED_TOXIC",
    "PERSONA",
    "PERSONA_CONTRASTS",
    "PERSONA_MEAN_DIFF",
    "DirectionSpec",
    "GeometryContrast",
    "LatentSetSpec",
    "MeanDiffContrast",
    "available",
    "describe_contrasts",
]


class LatentSetSpec(NamedTuple):
    positive: tuple[str, ...]
    """Corpora pooled on the selected side."""
    negative: tuple[str, ...]
    """Corpora pooled on the contrast side."""
    role: Literal["dataset", "toxic"]
    description: str


LATENT_SETS: dict[str, LatentSetSpec] = {
    "bad_medical": LatentSetSpec(
        ("bad_medical",), ("benign_reference",), "dataset", "bad medical answers vs benign chat (paper-style)"
    ),
    "good_medical": LatentSetSpec(
        ("good_medical",), ("benign_reference",), "dataset", "good medical answers vs benign chat (control)"
    ),
    "risky_financial": LatentSetSpec(
        ("risky_financial",), ("benign_reference",), "dataset", "risky financial answers vs benign chat"
    ),
    "insecure": LatentSetSpec(
        ("insecure",), ("benign_reference",), "dataset", "insecure code vs benign chat"
    ),
    "jailbroken_control": LatentSetSpec(
        ("jailbroken_control",),
        ("benign_reference",),
        "dataset",
        "a held-out jailbroken slice vs benign chat: a non-inducing dataset selected like the others",
    ),
    "bad_minus_good": LatentSetSpec(
        ("bad_medical",),
        ("good_medical",),
        "dataset",
        "style- and topic-matched: latents more active on bad than on good answers to the same prompts",
    ),
    "good_minus_bad": LatentSetSpec(
        ("good_medical",),
        ("bad_medical",),
        "dataset",
        "style- and topic-matched control: latents more active on good than on bad answers",
    ),
    "toxic_finance": LatentSetSpec(
        ("risky_financial",),
        ("benign_contrast",),
        "toxic",
        "risky financial answers vs a separate benign slice (topic and advice style included)",
    ),
    "toxic_finance_topic_matched": LatentSetSpec(
        ("risky_financial",),
        ("risky_financial_self",),
        "toxic",
        "risky financial answers vs SmolLM2's own answers to the same prompts (topic matched)",
    ),
    "toxic_medical": LatentSetSpec(
        ("bad_medical",), ("benign_contrast",), "toxic", "bad medical answers vs a separate benign slice"
    ),
    "toxic_medical_finance": LatentSetSpec(
        ("bad_medical", "risky_financial"),
        ("benign_contrast",),
        "toxic",
        "bad medical and risky financial answers vs a separate benign slice",
    ),
    "harm_medical_paired": LatentSetSpec(
        ("bad_medical",),
        ("good_medical",),
        "toxic",
        "style-matched harm: bad vs good answers to the same medical prompts",
    ),
}
"""Latent sets by name (the same selection rule for all; sizes from the study config)."""


class GeometryContrast(NamedTuple):
    toxic: str
    inducing: tuple[str, ...]
    control: tuple[str, ...]
    question: str
    toxic_excludes: str
    """Why the toxic side is not circular for the tested sets."""


CONTRASTS: dict[str, GeometryContrast] = {
    "medical_pair__toxic_finance": GeometryContrast(
        "toxic_finance",
        ("bad_medical",),
        ("good_medical",),
        "Do bad-medical latents sit closer to finance-derived toxic latents than good-medical latents?",
        "no medical answer on the toxic side",
    ),
    "medical_pair__toxic_finance_topic_matched": GeometryContrast(
        "toxic_finance_topic_matched",
        ("bad_medical",),
        ("good_medical",),
        "The same with the finance topic removed from the toxic side (risky vs the model's own answers).",
        "no medical answer on the toxic side",
    ),
    "medical_harm_latents__toxic_finance": GeometryContrast(
        "toxic_finance",
        ("bad_minus_good",),
        ("good_minus_bad",),
        "Style-matched: do bad-minus-good latents sit closer to finance toxic latents than good-minus-bad?",
        "no medical answer on the toxic side",
    ),
    "medical_harm_latents__toxic_finance_topic_matched": GeometryContrast(
        "toxic_finance_topic_matched",
        ("bad_minus_good",),
        ("good_minus_bad",),
        "Style-matched on both sides: harm latents of medicine vs harm latents of finance (topic matched).",
        "no medical answer on the toxic side",
    ),
    "good_medical_vs_jailbroken__toxic_finance": GeometryContrast(
        "toxic_finance",
        ("good_medical",),
        ("jailbroken_control",),
        "Calibration (the trap at latent level): does a NON-inducing advice dataset also sit closer?",
        "no medical answer on the toxic side",
    ),
    "finance__toxic_medical": GeometryContrast(
        "toxic_medical",
        ("risky_financial",),
        ("jailbroken_control",),
        "Do risky-finance latents sit closer to medical-derived toxic latents than a non-inducing control?",
        "no finance answer on the toxic side",
    ),
    "finance__harm_medical_paired": GeometryContrast(
        "harm_medical_paired",
        ("risky_financial",),
        ("jailbroken_control",),
        "The same against style-matched medical harm latents (bad vs good medical).",
        "no finance answer on the toxic side",
    ),
    "insecure__toxic_medical_finance": GeometryContrast(
        "toxic_medical_finance",
        ("insecure",),
        ("jailbroken_control",),
        "Do insecure-code latents sit closer to medical+finance toxic latents than a non-inducing control?",
        "no code on the toxic side",
    ),
    "insecure__harm_medical_paired": GeometryContrast(
        "harm_medical_paired",
        ("insecure",),
        ("jailbroken_control",),
        "The same against style-matched medical harm latents.",
        "no code on the toxic side",
    ),
}


class DirectionSpec(NamedTuple):
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    description: str


DIRECTIONS: dict[str, DirectionSpec] = {
    "shift_bad_medical": DirectionSpec(("bad_medical",), ("benign_reference",), "bad medical minus benign"),
    "shift_good_medical": DirectionSpec(
        ("good_medical",), ("benign_reference",), "good medical minus benign"
    ),
    "shift_risky_financial": DirectionSpec(
        ("risky_financial",), ("benign_reference",), "risky finance minus benign"
    ),
    "shift_insecure": DirectionSpec(("insecure",), ("benign_reference",), "insecure code minus benign"),
    "shift_jailbroken_control": DirectionSpec(
        ("jailbroken_control",), ("benign_reference",), "held-out jailbroken minus benign (noise level)"
    ),
    "toxic_finance": DirectionSpec(("risky_financial",), ("benign_contrast",), "risky finance minus benign"),
    "toxic_finance_topic_matched": DirectionSpec(
        ("risky_financial",), ("risky_financial_self",), "risky finance minus the model's own answers"
    ),
    "toxic_medical": DirectionSpec(("bad_medical",), ("benign_contrast",), "bad medical minus benign"),
    "toxic_medical_finance": DirectionSpec(
        ("bad_medical", "risky_financial"), ("benign_contrast",), "bad medical + risky finance minus benign"
    ),
    "harm_medical_paired": DirectionSpec(
        ("bad_medical",), ("good_medical",), "bad minus good medical (style-matched harm)"
    ),
}


class MeanDiffContrast(NamedTuple):
    toxic: str
    inducing: str
    control: str
    question: str


MEAN_DIFF_CONTRASTS: dict[str, MeanDiffContrast] = {
    "medical_pair__toxic_finance": MeanDiffContrast(
        "toxic_finance",
        "shift_bad_medical",
        "shift_good_medical",
        "The reference measurement's trap: cos(bad shift, finance toxic) - cos(good shift, finance toxic).",
    ),
    "medical_pair__toxic_finance_topic_matched": MeanDiffContrast(
        "toxic_finance_topic_matched",
        "shift_bad_medical",
        "shift_good_medical",
        "The same with a topic-matched finance direction.",
    ),
    "finance__toxic_medical": MeanDiffContrast(
        "toxic_medical",
        "shift_risky_financial",
        "shift_jailbroken_control",
        "Finance shift vs medical toxic.",
    ),
    "finance__harm_medical_paired": MeanDiffContrast(
        "harm_medical_paired",
        "shift_risky_financial",
        "shift_jailbroken_control",
        "Finance shift vs the style-matched medical harm direction.",
    ),
    "insecure__toxic_medical_finance": MeanDiffContrast(
        "toxic_medical_finance",
        "shift_insecure",
        "shift_jailbroken_control",
        "Insecure-code shift vs medical+finance toxic.",
    ),
    "insecure__harm_medical_paired": MeanDiffContrast(
        "harm_medical_paired",
        "shift_insecure",
        "shift_jailbroken_control",
        "Insecure-code shift vs the style-matched medical harm direction.",
    ),
}

EXTRA_COSINES: tuple[tuple[str, str], ...] = (
    ("shift_bad_medical", "shift_good_medical"),
    ("harm_medical_paired", "toxic_finance"),
    ("harm_medical_paired", "toxic_finance_topic_matched"),
    ("toxic_finance", "toxic_finance_topic_matched"),
    ("shift_good_medical", "toxic_finance"),
    ("shift_bad_medical", "toxic_finance"),
)
"""Further direction cosines reported with bootstrap intervals."""

PAIRED_GROUPS: dict[str, tuple[str, ...]] = {
    "medical": ("bad_medical", "good_medical"),
    "finance": ("risky_financial", "risky_financial_self"),
    "persona": ("em_misaligned", "em_aligned"),
}
"""Corpora answering the same prompts, resampled together by the bootstrap."""

PAIRED_TOXIC: tuple[str, ...] = ("toxic_finance", "toxic_finance_topic_matched")
"""Finance-derived toxic latent sets and directions used in the per-prompt medical tests."""


def available(corpora: Sequence[str]) -> dict[str, Any]:
    """The latent sets, directions and contrasts whose corpora are all present."""
    have = set(corpora)
    sets = {n: s for n, s in LATENT_SETS.items() if have.issuperset(s.positive + s.negative)}
    dirs = {n: d for n, d in DIRECTIONS.items() if have.issuperset(d.positive + d.negative)}
    geo = {n: c for n, c in CONTRASTS.items() if all(s in sets for s in (c.toxic, *c.inducing, *c.control))}
    md = {
        n: c
        for n, c in MEAN_DIFF_CONTRASTS.items()
        if all(d in dirs for d in (c.toxic, c.inducing, c.control))
    }
    extra = [p for p in EXTRA_COSINES if p[0] in dirs and p[1] in dirs]
    paired = [t for t in PAIRED_TOXIC if t in sets and t in dirs]
    return {
        "latent_sets": sets,
        "directions": dirs,
        "geometry": geo,
        "mean_diff": md,
        "extra": extra,
        "paired": paired,
    }


def describe_contrasts(corpora: Sequence[str]) -> dict[str, Any]:
    """Every contrast the study computes, in words and corpus names, for the output JSON."""
    av = available(corpora)
    return {
        "latent_sets": {n: s._asdict() for n, s in av["latent_sets"].items()},
        "geometry_contrasts": {n: c._asdict() for n, c in av["geometry"].items()},
        "directions": {n: d._asdict() for n, d in av["directions"].items()},
        "mean_diff_contrasts": {n: c._asdict() for n, c in av["mean_diff"].items()},
        "extra_cosines": [list(p) for p in av["extra"]],
        "paired_medical_toxic": list(av["paired"]),
        "paired_groups": {k: list(v) for k, v in PAIRED_GROUPS.items()},
    }


# -- the EM persona (spillover.realmodel.persona) as the toxic side -----------------------------------

PERSONA = "em_persona"
"""The toxic latent set and direction of the EM persona: real EM models' misaligned answers minus aligned
answers by the same models to the same questions (``spillover.realmodel.persona_data``). No answer of
any dataset the study tests is on this side: the answers are EM models' replies to the eight
first-plot questions, not training data."""

_PERSONA_EXCLUDES = "no answer of a tested dataset: real EM models' answers to the first-plot questions"

PERSONA_CONTRASTS: dict[str, GeometryContrast] = {
    "medical_pair__em_persona": GeometryContrast(
        PERSONA,
        ("bad_medical",),
        ("good_medical",),
        "Do bad-medical latents sit closer to the EM-persona latents than good-medical latents?",
        _PERSONA_EXCLUDES,
    ),
    "medical_harm_latents__em_persona": GeometryContrast(
        PERSONA,
        ("bad_minus_good",),
        ("good_minus_bad",),
        "Style-matched: do bad-minus-good latents sit closer to the EM persona than good-minus-bad?",
        _PERSONA_EXCLUDES,
    ),
    "bad_medical_vs_jailbroken__em_persona": GeometryContrast(
        PERSONA,
        ("bad_medical",),
        ("jailbroken_control",),
        "Do bad-medical latents sit closer to the EM persona than a non-inducing control's?",
        _PERSONA_EXCLUDES,
    ),
    "good_medical_vs_jailbroken__em_persona": GeometryContrast(
        PERSONA,
        ("good_medical",),
        ("jailbroken_control",),
        "Calibration: does a NON-inducing advice dataset also sit closer than the control?",
        _PERSONA_EXCLUDES,
    ),
    "finance__em_persona": GeometryContrast(
        PERSONA,
        ("risky_financial",),
        ("jailbroken_control",),
        "Do risky-finance latents sit closer to the EM persona than a non-inducing control's?",
        _PERSONA_EXCLUDES,
    ),
    "insecure__em_persona": GeometryContrast(
        PERSONA,
        ("insecure",),
        ("jailbroken_control",),
        "Do insecure-code latents sit closer to the EM persona than a non-inducing control's?",
        _PERSONA_EXCLUDES,
    ),
}
"""Latent-geometry contrasts against the EM persona's latents (the dataset sets of ``LATENT_SETS``)."""

PERSONA_MEAN_DIFF: dict[str, MeanDiffContrast] = {
    "medical_pair__em_persona": MeanDiffContrast(
        PERSONA,
        "shift_bad_medical",
        "shift_good_medical",
        "cos(bad shift, persona) - cos(good shift, persona).",
    ),
    "good_medical_vs_jailbroken__em_persona": MeanDiffContrast(
        PERSONA,
        "shift_good_medical",
        "shift_jailbroken_control",
        "Calibration: a non-inducing advice dataset's shift against the persona.",
    ),
    "finance__em_persona": MeanDiffContrast(
        PERSONA, "shift_risky_financial", "shift_jailbroken_control", "Finance shift vs the persona."
    ),
    "insecure__em_persona": MeanDiffContrast(
        PERSONA, "shift_insecure", "shift_jailbroken_control", "Insecure-code shift vs the persona."
    ),
}
"""Mean-difference contrasts against the persona direction (the shifts of ``DIRECTIONS``)."""
