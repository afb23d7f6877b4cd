"""Residual activations of every study corpus at a few layers, computed once and kept on disk.

One forward pass per batch (stopped after the deepest layer) reads the prompt and answer tokens of every
sample (``spillover.sae.activations``: chat template, special tokens dropped; system prompts are not
kept, so the chat template's fixed default system prompt does not flood the SAE's training data).
Every token carries a flag saying whether it belongs to the answer. The SAEs are trained on all cached
tokens (prompts and answers of benign chat and EM data); every geometry measurement reads answer tokens
only (method.md step 1).

The cache is a folder: ``activations.safetensors`` (``acts_<layer>`` ``(N, d)``, ``sample``, ``position``,
``answer``, ``input_ids`` and ``id_offsets`` for the samples' token ids) and ``cache.json`` (layers,
corpus ranges). Tokens are sorted by (sample, position), and each corpus is a contiguous range of
samples.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spillover.geometry.features import FeatureStats
from spillover.sae.activations import EncodedSample, Sample, encode_samples, iter_activations
from spillover.sae.load import SAEHandle
from spillover.sae.sites import site_for_layer

__all__ = ["ActivationCache", "collect_cache"]

log = logging.getLogger(__name__)

_FILE = "activations.safetensors"
_META = "cache.json"


@dataclass
class ActivationCache:
    """Cached prompt and answer token activations of named corpora at some layers.

    Shapes: ``N`` cached tokens, ``d`` the model width, ``S`` samples over all corpora.
    """

    layers: tuple[int, ...]
    corpora: dict[str, tuple[int, int]]
    """Corpus name -> ``[start, end)`` range of global sample indices."""
    acts: dict[int, torch.Tensor]
    """Layer -> ``(N, d)`` activations (stored dtype; ``float()`` before arithmetic)."""
    sample: torch.Tensor
    """``(N,)`` long: global sample index of each token (non-decreasing)."""
    position: torch.Tensor
    """``(N,)`` long: the token's position in its chat-templated sample."""
    answer: torch.Tensor
    """``(N,)`` bool: the token belongs to an assistant answer."""
    input_ids: list[list[int]]
    """Token ids of each sample (``S`` entries), for rendering top-activating contexts."""

    # -- corpus access ---------------------------------------------------------------------------------
    def n_samples(self, corpus: str) -> int:
        start, end = self._range(corpus)
        return end - start

    def _range(self, corpus: str) -> tuple[int, int]:
        if corpus not in self.corpora:
            raise KeyError(f"corpus {corpus!r} is not in the cache; it has {sorted(self.corpora)}")
        return self.corpora[corpus]

    def encoded(self, corpus: str) -> list[EncodedSample]:
        """The corpus's samples as ``EncodedSample`` (ids only; ``select`` is all False)."""
        start, end = self._range(corpus)
        return [EncodedSample(ids, [False] * len(ids)) for ids in self.input_ids[start:end]]

    def _token_range(self, start: int, end: int) -> tuple[int, int]:
        bounds = torch.searchsorted(self.sample, torch.tensor([start, end]))
        return int(bounds[0]), int(bounds[1])

    def chunks(
        self, corpus: str, layer: int, *, answer_only: bool = True, chunk: int = 64
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]]:
        """Yield ``(acts (n, d) float32, row (n,), position (n,), sample_ids)`` per chunk of samples.

        ``row`` indexes ``sample_ids``; sample ids are local to the corpus (0 = its first sample).
        """
        start, end = self._range(corpus)
        acts = self.acts[layer]
        for s0 in range(start, end, chunk):
            s1 = min(end, s0 + chunk)
            t0, t1 = self._token_range(s0, s1)
            keep = self.answer[t0:t1] if answer_only else torch.ones(t1 - t0, dtype=torch.bool)
            yield (
                acts[t0:t1][keep].float(),
                self.sample[t0:t1][keep] - s0,
                self.position[t0:t1][keep],
                list(range(s0 - start, s1 - start)),
            )

    # -- summaries -------------------------------------------------------------------------------------
    def feature_stats(
        self, corpus: str, handle: SAEHandle, layer: int, *, top_contexts: int = 5
    ) -> FeatureStats:
        """The SAE's latent statistics on the corpus's answer tokens (``spillover.geometry.features``)."""
        stats = FeatureStats(handle.key, handle.d_sae, handle.d_in, top_contexts)
        for acts, rows, pos, ids in self.chunks(corpus, layer):
            stats.update(handle, acts, rows, pos, ids)
        return stats

    def sample_means(self, corpus: str, layer: int) -> torch.Tensor:
        """``(n, d)`` float32: each sample's mean answer-token activation (NaN rows for empty answers)."""
        n = self.n_samples(corpus)
        total = torch.zeros(n, self.acts[layer].shape[1], dtype=torch.float64)
        count = torch.zeros(n, dtype=torch.float64)
        for acts, rows, _, ids in self.chunks(corpus, layer):
            idx = torch.tensor(ids)[rows]
            total.index_add_(0, idx, acts.double())
            count.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
        return (total / count[:, None]).float()

    def sample_codes(self, corpus: str, handle: SAEHandle, layer: int) -> torch.Tensor:
        """``(n, d_sae)``: each sample's token-mean SAE latent activation on its answer."""
        n = self.n_samples(corpus)
        total = torch.zeros(n, handle.d_sae)
        count = torch.zeros(n)
        for acts, rows, _, ids in self.chunks(corpus, layer):
            idx = torch.tensor(ids)[rows]
            total.index_add_(0, idx, handle.encode(acts).cpu())
            count.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))
        return total / count.clamp(min=1)[:, None]

    def training_activations(self, layer: int) -> torch.Tensor:
        """Every cached token's activation at ``layer`` (prompts and answers), ``(N, d)`` float32."""
        return self.acts[layer].float()

    # -- disk ------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        lengths = torch.tensor([len(ids) for ids in self.input_ids], dtype=torch.long)
        tensors = {f"acts_{layer}": a.contiguous() for layer, a in self.acts.items()}
        tensors.update(
            sample=self.sample,
            position=self.position,
            answer=self.answer,
            input_ids=torch.tensor([t for ids in self.input_ids for t in ids], dtype=torch.long),
            id_offsets=torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        )
        save_file(tensors, str(out / _FILE))
        meta = {"layers": list(self.layers), "corpora": {k: list(v) for k, v in self.corpora.items()}}
        (out / _META).write_text(json.dumps(meta, indent=1))
        return out

    @classmethod
    def load(cls, folder: str | Path) -> ActivationCache:
        from safetensors.torch import load_file

        path = Path(folder)
        if not (path / _META).is_file() or not (path / _FILE).is_file():
            raise FileNotFoundError(f"{path} is not an activation cache (no {_META} / {_FILE})")
        meta = json.loads((path / _META).read_text())
        t = load_file(str(path / _FILE))
        flat, offsets = t["input_ids"].tolist(), t["id_offsets"].tolist()
        return cls(
            layers=tuple(meta["layers"]),
            corpora={k: (int(v[0]), int(v[1])) for k, v in meta["corpora"].items()},
            acts={layer: t[f"acts_{layer}"] for layer in meta["layers"]},
            sample=t["sample"],
            position=t["position"],
            answer=t["answer"],
            input_ids=[flat[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)],
        )


def collect_cache(
    model: nn.Module,
    tokenizer: Any,
    corpora: Mapping[str, Sequence[Sample]],
    layers: Sequence[int],
    *,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float16,
) -> ActivationCache:
    """Run the model once over every corpus and keep the prompt and answer tokens' activations.

    Args:
        model: an HF causal LM in eval mode.
        tokenizer: its tokenizer (chat template).
        corpora: corpus name -> conversations.
        layers: decoder layers whose outputs (``resid_post``) are kept.
        batch_size: samples per forward pass.
        dtype: storage dtype (float16 halves memory; checked against overflow).

    Returns:
        The cache, tokens sorted by (sample, position).
    """
    if not layers:
        raise ValueError("collect_cache needs at least one layer")
    samples: list[Sample] = []
    ranges: dict[str, tuple[int, int]] = {}
    for name, convs in corpora.items():
        ranges[name] = (len(samples), len(samples) + len(convs))
        samples.extend(convs)
    user = encode_samples(tokenizer, samples, tokens="user")
    answer = encode_samples(tokenizer, samples, tokens="assistant")
    combined = []
    for u, a in zip(user, answer, strict=True):
        if u.input_ids != a.input_ids:
            raise RuntimeError("the chat template rendered one sample two ways; cannot align its masks")
        combined.append(EncodedSample(u.input_ids, [x or y for x, y in zip(u.select, a.select, strict=True)]))
    empty = [i for i, a in enumerate(answer) if not any(a.select)]
    if empty:
        log.warning("%d samples have no answer tokens (first: %d)", len(empty), empty[0])
    sites = [site_for_layer(model, layer) for layer in layers]
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    samp: list[torch.Tensor] = []
    pos: list[torch.Tensor] = []
    for batch in iter_activations(
        model, tokenizer, samples, sites, encoded=combined, batch_size=batch_size, description="activations"
    ):
        gid = torch.tensor(batch.sample_ids, dtype=torch.long)[batch.token_sample.cpu()]
        samp.append(gid)
        pos.append(batch.positions.cpu())
        for layer, site in zip(layers, sites, strict=True):
            acts = batch.acts[site].float().cpu()
            peak = float(acts.abs().max()) if acts.numel() else 0.0
            if dtype == torch.float16 and peak > 6e4:
                raise ValueError(f"layer {layer} activations reach {peak:.3g}, beyond float16; use float32")
            parts[layer].append(acts.to(dtype))
    sample = torch.cat(samp)
    position = torch.cat(pos)
    order = torch.argsort(sample * (1 + int(position.max())) + position)
    sample, position = sample[order], position[order]
    is_answer = torch.tensor(
        [answer[s].select[p] for s, p in zip(sample.tolist(), position.tolist(), strict=True)],
        dtype=torch.bool,
    )
    stacked = {layer: torch.cat(parts[layer])[order] for layer in layers}
    log.info(
        "cached %d tokens (%d answer tokens) of %d samples at layers %s",
        len(sample),
        int(is_answer.sum()),
        len(samples),
        list(layers),
    )
    return ActivationCache(
        layers=tuple(layers),
        corpora=ranges,
        acts=stacked,
        sample=sample,
        position=position,
        answer=is_answer,
        input_ids=[e.input_ids for e in combined],
    )
