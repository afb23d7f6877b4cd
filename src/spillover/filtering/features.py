"""Per-sample inputs of the filtering scores: one forward pass per batch, then plain tensors.

``sample_features`` runs the model on every training sample (chat template, assistant-answer tokens by
default), encodes the selected tokens with the SAE and keeps, per sample, the token-mean latent
activations and the token-mean residual activation. ``toxic_reference`` derives, from toxic and benign
reference corpora, the toxic latents (top-k by contrast, ``spillover.geometry.features.toxic_features``)
and the persona direction (difference of means). ``score_samples`` then computes every score of
:mod:`spillover.filtering.scores`.

Python::

    feats = sample_features(model, tokenizer, conversations, sae)
    ref = toxic_reference(model, tokenizer, toxic_convs, benign_convs, sae)
    scores = score_samples(feats, ref, sae.decoder())         # {"nearest_toxic_cosine": (N,), ...}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from spillover.filtering.scores import (
    SCORE_METHODS,
    ScoreMethod,
    check_toxic_k,
    diff_of_means_direction,
    nearest_toxic_cosine,
    persona_projection,
    toxic_activation,
    toxic_subspace,
)
from spillover.sae.activations import Sample, TokenSelection, iter_activations
from spillover.sae.load import SAEHandle

__all__ = ["SampleFeatures", "ToxicReference", "sample_features", "score_samples", "toxic_reference"]

log = logging.getLogger(__name__)


class SampleFeatures(NamedTuple):
    """Per-sample summaries of a dataset under one SAE (CPU float32)."""

    feature_acts_NF: torch.Tensor
    """``(n_samples, d_sae)`` token-mean latent activations (zeros for a sample with no selected token)."""
    mean_acts_ND: torch.Tensor
    """``(n_samples, d_in)`` token-mean residual activations at the SAE's site (zeros if no token)."""
    n_tokens_N: torch.Tensor
    """``(n_samples,)`` selected tokens per sample."""


class ToxicReference(NamedTuple):
    """What the scores compare samples with, derived from toxic vs benign reference corpora."""

    toxic_idx: torch.Tensor
    """``(k,)`` toxic latents, best first."""
    direction_D: torch.Tensor
    """``(d_in,)`` unit difference-of-means direction (toxic minus benign): the persona vector."""
    benign_mean_D: torch.Tensor
    """``(d_in,)`` mean benign activation: the centre for the toxic-subspace projection."""
    toxic_mean_D: torch.Tensor
    """``(d_in,)`` mean toxic activation."""


@torch.no_grad()
def sample_features(
    model: nn.Module,
    tokenizer: Any,
    samples: Sequence[Sample],
    sae: SAEHandle,
    *,
    tokens: TokenSelection = "assistant",
    batch_size: int = 64,
    max_len: int | None = None,
) -> SampleFeatures:
    """Token-mean SAE latent and residual activations of every sample.

    Args:
        model: HF causal LM in eval mode (the one the SAE was trained on).
        tokenizer: its tokenizer (chat template for conversations).
        samples: conversations (or raw strings).
        sae: the SAE, bound to its site in ``model``.
        tokens: which tokens of a conversation count (the answer by default, method.md step 1).
        batch_size: samples per forward pass.
        max_len: truncate samples to this many tokens.

    Returns:
        SampleFeatures in the order of ``samples``.
    """
    n = len(samples)
    feats_NF = torch.zeros(n, sae.d_sae)
    resid_ND = torch.zeros(n, sae.d_in)
    counts_N = torch.zeros(n, dtype=torch.long)
    for batch in iter_activations(
        model,
        tokenizer,
        samples,
        [sae.site],
        tokens=tokens,
        batch_size=batch_size,
        max_len=max_len,
        description="per-sample features",
    ):
        acts_ND = batch.acts[sae.site]
        if acts_ND.shape[0] == 0:
            continue
        rows = batch.token_sample.cpu()
        ids = torch.tensor(batch.sample_ids, dtype=torch.long)[rows]
        codes_NF = sae.encode(acts_ND).cpu()
        feats_NF.index_add_(0, ids, codes_NF)
        resid_ND.index_add_(0, ids, acts_ND.float().cpu())
        counts_N.index_add_(0, ids, torch.ones_like(ids))
    denom = counts_N.clamp(min=1).unsqueeze(1).float()
    empty = int((counts_N == 0).sum())
    if empty:
        log.warning("%d of %d samples have no %s tokens; their features are zero", empty, n, tokens)
    return SampleFeatures(feats_NF / denom, resid_ND / denom, counts_N)


def toxic_reference(
    model: nn.Module,
    tokenizer: Any,
    toxic: Sequence[Sample],
    benign: Sequence[Sample],
    sae: SAEHandle,
    *,
    k: int | None = None,
    tokens: TokenSelection = "assistant",
    batch_size: int = 64,
) -> ToxicReference:
    """Toxic latents (top-k by mean-activation contrast, toxic minus benign) and the persona direction.

    Args:
        model: HF causal LM in eval mode.
        tokenizer: its tokenizer.
        toxic: toxic samples (harmful answers, or toxic text).
        benign: benign samples (same prompts or domains, benign answers).
        sae: the SAE.
        k: number of toxic latents (default ``spillover.geometry.features.default_top_k``).
        tokens: which tokens of a conversation count.
        batch_size: samples per forward pass.
    """
    from spillover.geometry.features import score_datasets, toxic_features

    check_toxic_k(k)
    stats = score_datasets(
        model,
        tokenizer,
        {"toxic": toxic, "benign": benign},
        [sae],
        tokens=tokens,
        batch_size=batch_size,
        top_contexts=0,
    )
    tox, ben = stats["toxic"][sae.key], stats["benign"][sae.key]
    chosen = toxic_features(tox, ben, k=k)
    if chosen.indices.numel() == 0:
        raise ValueError(
            "no latent is more active on the toxic corpus than on the benign one; check the corpora"
        )
    direction = diff_of_means_direction(tox.resid_mean.unsqueeze(0), ben.resid_mean.unsqueeze(0))
    return ToxicReference(chosen.indices.long(), direction, ben.resid_mean.float(), tox.resid_mean.float())


def score_samples(
    features: SampleFeatures,
    reference: ToxicReference,
    decoder_FD: torch.Tensor,
    methods: Sequence[ScoreMethod] = SCORE_METHODS,
) -> dict[str, np.ndarray]:
    """Every requested score for every sample (higher = closer to toxic = removed first).

    Args:
        features: from :func:`sample_features`.
        reference: from :func:`toxic_reference`.
        decoder_FD: the SAE's decoder ``(d_sae, d_in)``.
        methods: which scores.

    Returns:
        ``{method: (n_samples,) float array}``.
    """
    out: dict[str, np.ndarray] = {}
    for method in methods:
        if method == "nearest_toxic_cosine":
            values = nearest_toxic_cosine(features.feature_acts_NF, decoder_FD, reference.toxic_idx)
        elif method == "toxic_activation":
            values = toxic_activation(features.feature_acts_NF, reference.toxic_idx)
        elif method == "toxic_subspace":
            values = toxic_subspace(
                features.mean_acts_ND, decoder_FD, reference.toxic_idx, center_D=reference.benign_mean_D
            )
        elif method == "persona_projection":
            values = persona_projection(features.mean_acts_ND, reference.direction_D)
        else:
            raise ValueError(f"unknown score {method!r}; valid: {list(SCORE_METHODS)}")
        out[method] = values.double().numpy()
    return out
