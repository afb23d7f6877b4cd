"""Residual-stream activations of any HF causal LM on chat samples, at chosen sites and tokens.

Each sample is formatted with the model's chat template (``spillover.data.tokenize.encode_chat``) and
the tokens of one role are kept: the assistant's answer by default (``tokens="user"`` or ``"all"``).
Special tokens (BOS, role markers, end-of-turn) are always dropped: their activations are outliers that
say nothing about the content. A plain string is a raw text sample (e.g. a toxic-text corpus): it is
tokenized after a BOS token and all its non-special tokens are kept.

Samples are batched by length (longest first, right padding), the forward pass stops after the deepest
requested site, and only the selected tokens' activations leave the batch, so memory scales with the
answer tokens of one batch. ``iter_activations`` is the streaming core; ``collect_activations`` keeps
per-sample results for callers that need them (e.g. per-sample filtering scores).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from spillover.data.chat import Conversation
from spillover.data.tokenize import encode_chat
from spillover.progress import track
from spillover.sae.sites import Site, capture

__all__ = [
    "ActivationBatch",
    "EncodedSample",
    "Sample",
    "TokenSelection",
    "collect_activations",
    "encode_samples",
    "iter_activations",
    "length_batches",
    "model_device",
]

log = logging.getLogger(__name__)

Sample = Conversation | str
"""A chat conversation (list of messages) or a raw text."""
TokenSelection = Literal["assistant", "user", "all"]
Reduce = Literal["none", "mean", "max"]


class EncodedSample(NamedTuple):
    input_ids: list[int]
    select: list[bool]
    """True on the tokens whose activations are kept (never on special tokens)."""


class ActivationBatch(NamedTuple):
    """The selected tokens' activations of one batch, flattened over samples."""

    sample_ids: list[int]
    """Index (into the samples given) of each batch row, ``B`` entries."""
    token_sample: torch.Tensor
    """``(N,)`` long: the batch row of each selected token."""
    positions: torch.Tensor
    """``(N,)`` long: the token's position in its sample."""
    acts: dict[Site, torch.Tensor]
    """``{site: (N, d)}`` in the model's dtype and on its device."""


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


def _default_max_len(model: nn.Module) -> int | None:
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def encode_samples(
    tokenizer: Any,
    samples: Sequence[Sample],
    *,
    tokens: TokenSelection = "assistant",
    max_len: int | None = None,
) -> list[EncodedSample]:
    """Tokenize samples and mark the tokens whose activations are kept.

    Args:
        tokenizer: a fast HF tokenizer with a chat template.
        samples: conversations (chat template applied) or raw strings (all non-special tokens kept).
        tokens: which role's tokens to keep for conversations.
        max_len: truncate each sample on the right to this many tokens.
    """
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out: list[EncodedSample] = []
    n_truncated = 0
    for sample in samples:
        if isinstance(sample, str):
            ids = list(tokenizer(sample, add_special_tokens=True)["input_ids"])
            # Models see text after BOS (SAEs are trained that way); add it when the tokenizer does not.
            bos = getattr(tokenizer, "bos_token_id", None)
            if bos is not None and (not ids or ids[0] != bos):
                ids = [bos, *ids]
            mask = [True] * len(ids)
        else:
            enc = encode_chat(tokenizer, sample, loss_on=tokens)
            ids, mask = enc.input_ids, enc.mask
        if max_len is not None and len(ids) > max_len:
            ids, mask = ids[:max_len], mask[:max_len]
            n_truncated += 1
        out.append(EncodedSample(ids, [m and t not in special for t, m in zip(ids, mask, strict=True)]))
    if n_truncated:
        log.warning("%d of %d samples were truncated to %d tokens", n_truncated, len(samples), max_len)
    return out


def length_batches(
    lengths: Sequence[int], batch_size: int, *, max_tokens: int | None = None
) -> list[list[int]]:
    """Group sample indices into batches of similar length (longest first), to waste little padding.

    Args:
        lengths: token count of each sample.
        batch_size: at most this many samples per batch.
        max_tokens: at most this many padded tokens (rows x longest) per batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (
            len(current) >= batch_size
            or (max_tokens is not None and (len(current) + 1) * longest > max_tokens)
        ):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def iter_activations(
    model: nn.Module,
    tokenizer: Any,
    samples: Sequence[Sample],
    sites: Sequence[Site],
    *,
    tokens: TokenSelection = "assistant",
    batch_size: int = 32,
    max_tokens: int | None = None,
    max_len: int | None = None,
    encoded: Sequence[EncodedSample] | None = None,
    description: str = "activations",
) -> Iterator[ActivationBatch]:
    """Stream the selected tokens' activations at ``sites``, one length-grouped batch at a time.

    Args:
        model: an HF causal LM in eval mode (any device, any dtype).
        tokenizer: its tokenizer (chat template needed for conversations).
        samples: conversations or raw strings.
        sites: where to read; the forward pass stops after the last of them.
        tokens: which tokens to keep (special tokens never are).
        batch_size: samples per forward pass.
        max_tokens: cap on padded tokens per batch (rows x longest sample).
        max_len: truncate samples to this many tokens (default: the model's context size).
        encoded: pre-tokenized samples (from ``encode_samples``), to skip tokenizing again.
        description: progress-bar label.

    Yields:
        ``ActivationBatch`` with ``(N, d)`` activations of the batch's N selected tokens per site.
        Samples with no selected token appear in ``sample_ids`` but contribute no row.
    """
    if encoded is None:
        encoded = encode_samples(
            tokenizer, samples, tokens=tokens, max_len=max_len or _default_max_len(model)
        )
    device = model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = length_batches([len(e.input_ids) for e in encoded], batch_size, max_tokens=max_tokens)
    for batch in track(batches, description):
        longest = max(len(encoded[i].input_ids) for i in batch)
        ids_BT = torch.full((len(batch), longest), pad_id, dtype=torch.long)
        attn_BT = torch.zeros((len(batch), longest), dtype=torch.long)
        select_BT = torch.zeros((len(batch), longest), dtype=torch.bool)
        for row, i in enumerate(batch):
            n = len(encoded[i].input_ids)
            ids_BT[row, :n] = torch.tensor(encoded[i].input_ids)
            attn_BT[row, :n] = 1
            select_BT[row, :n] = torch.tensor(encoded[i].select, dtype=torch.bool)
        acts = capture(model, sites, ids_BT.to(device), attn_BT.to(device), stop=True)
        rows, positions = select_BT.nonzero(as_tuple=True)
        select_dev = select_BT.to(device)
        yield ActivationBatch(
            sample_ids=list(batch),
            token_sample=rows,
            positions=positions,
            acts={site: a[select_dev] for site, a in acts.items()},
        )


def collect_activations(
    model: nn.Module,
    tokenizer: Any,
    samples: Sequence[Sample],
    sites: Sequence[Site],
    *,
    tokens: TokenSelection = "assistant",
    batch_size: int = 32,
    max_len: int | None = None,
    reduce: Reduce = "none",
) -> dict[Site, list[torch.Tensor]]:
    """Per-sample activations at each site, in the order of ``samples``, as float32 on the CPU.

    Args:
        model: an HF causal LM in eval mode.
        tokenizer: its tokenizer.
        samples: conversations or raw strings.
        sites: where to read.
        tokens: which tokens to keep (``"assistant"``: the answers, ``"user"``, ``"all"``).
        batch_size: samples per forward pass.
        max_len: truncate samples to this many tokens.
        reduce: ``"none"``: each entry is ``(T_i, d)`` (the sample's selected tokens);
            ``"mean"``/``"max"``: each entry is ``(d,)``, the mean / elementwise max over those tokens
            (NaN for a sample with no selected token).

    Returns:
        ``{site: [per-sample tensor]}``.
    """
    out: dict[Site, list[torch.Tensor | None]] = {s: [None] * len(samples) for s in sites}
    for batch in iter_activations(
        model, tokenizer, samples, sites, tokens=tokens, batch_size=batch_size, max_len=max_len
    ):
        rows = batch.token_sample.tolist()
        for site, acts_ND in batch.acts.items():
            acts_ND = acts_ND.float().cpu()
            starts = [0] * (len(batch.sample_ids) + 1)
            for r in rows:
                starts[r + 1] += 1
            for r in range(len(batch.sample_ids)):
                starts[r + 1] += starts[r]
            for r, i in enumerate(batch.sample_ids):
                out[site][i] = acts_ND[starts[r] : starts[r + 1]]
    result: dict[Site, list[torch.Tensor]] = {}
    n_empty = 0
    for site, items in out.items():
        d = next((t.shape[-1] for t in items if t is not None), 0)
        full = [t if t is not None else torch.zeros(0, d) for t in items]
        if reduce == "none":
            result[site] = full
            continue
        reduced = []
        for t in full:
            if t.shape[0] == 0:
                n_empty += 1
                reduced.append(torch.full((d,), float("nan")))
            else:
                reduced.append(t.mean(0) if reduce == "mean" else t.amax(0))
        result[site] = reduced
    if n_empty:
        log.warning(
            "%d sample(s) had no selected tokens; their %s activation is NaN", n_empty // len(sites), reduce
        )
    return result
