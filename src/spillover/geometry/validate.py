"""Feature validation, as the paper did: top-activating contexts and logit-lens tokens per latent.

* ``logit_lens``: the unembedding applied to a latent's decoder direction, through the model's final
  norm where it has one (RMSNorm/LayerNorm of a direction keeps its orientation up to the norm's
  per-dimension weights, which is what matters for the ranking). The top tokens say what the latent
  pushes the model to say.
* ``context_snippets``: the samples where a latent fired most (from ``FeatureStats``), rendered as a
  window of tokens around the maximum, the peak token marked with ``[[ ]]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from spillover.geometry.features import FeatureStats
from spillover.sae.activations import EncodedSample, Sample, TokenSelection, encode_samples
from spillover.sae.sites import final_norm

__all__ = ["Snippet", "context_snippets", "logit_lens"]

Snippet = dict[str, Any]


@torch.no_grad()
def logit_lens(
    model: nn.Module, tokenizer: Any, directions_KD: torch.Tensor, *, k: int = 10, through_norm: bool = True
) -> list[list[tuple[str, float]]]:
    """Top-``k`` tokens (and logits) of the unembedding applied to each direction.

    Args:
        model: an HF causal LM with output embeddings.
        tokenizer: to turn ids into token strings.
        directions_KD: ``(K, d_model)`` decoder directions.
        k: tokens per direction.
        through_norm: apply the final norm first (when the model has one).

    Returns:
        One list of ``(token, logit)`` per direction, highest first.
    """
    unembed = model.get_output_embeddings()  # type: ignore[operator]
    if unembed is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings; logit lens needs an LM head")
    weight = unembed.weight
    x = directions_KD.to(device=weight.device, dtype=weight.dtype)
    norm = final_norm(model) if through_norm else None
    if norm is not None:
        x = norm(x.unsqueeze(0)).squeeze(0)
    logits_KV = (x @ weight.T).float()
    bias = getattr(unembed, "bias", None)
    if bias is not None:
        logits_KV = logits_KV + bias.float()
    n_vocab = min(logits_KV.shape[-1], len(tokenizer))
    values, ids = logits_KV[:, :n_vocab].topk(min(k, n_vocab), dim=-1)
    return [
        [(tokenizer.decode([int(i)]), float(v)) for v, i in zip(vs, is_, strict=True)]
        for vs, is_ in zip(values.cpu(), ids.cpu(), strict=True)
    ]


def context_snippets(
    stats: FeatureStats,
    latents: Sequence[int],
    samples: Sequence[Sample],
    tokenizer: Any,
    *,
    tokens: TokenSelection = "assistant",
    max_len: int | None = None,
    window: int = 12,
    per_latent: int = 3,
    encoded: Sequence[EncodedSample] | None = None,
) -> dict[int, list[Snippet]]:
    """The top-activating contexts of ``latents`` in one dataset, as text windows.

    Args:
        stats: the dataset's statistics (they remember where each latent peaked).
        latents: latent indices to render.
        samples: the dataset's samples, in the order they were scored.
        tokenizer: the tokenizer used to score them.
        tokens: the token selection used when scoring (to re-encode identically).
        max_len: the truncation used when scoring.
        window: tokens shown on each side of the peak.
        per_latent: snippets per latent.
        encoded: the samples' encodings, if already at hand.

    Returns:
        ``{latent: [{"sample": i, "position": p, "activation": a, "token": t, "text": "... [[t]] ..."}]}``.
    """
    needed = {s for latent in latents for s, _, _ in stats.contexts(latent)[:per_latent]}
    cache: dict[int, list[int]] = {}
    if encoded is not None:
        cache = {i: list(encoded[i].input_ids) for i in needed}
    else:
        for i in sorted(needed):
            cache[i] = encode_samples(tokenizer, [samples[i]], tokens=tokens, max_len=max_len)[0].input_ids
    out: dict[int, list[Snippet]] = {}
    for latent in latents:
        items: list[Snippet] = []
        for sample, pos, act in stats.contexts(latent)[:per_latent]:
            ids = cache[sample]
            before = tokenizer.decode(ids[max(0, pos - window) : pos])
            peak = tokenizer.decode(ids[pos : pos + 1])
            after = tokenizer.decode(ids[pos + 1 : pos + window + 1])
            text = f"{before} [[{peak}]] {after}".strip()
            items.append({"sample": sample, "position": pos, "activation": act, "token": peak, "text": text})
        out[int(latent)] = items
    return out
