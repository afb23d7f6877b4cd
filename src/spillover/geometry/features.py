"""Which SAE latents a dataset uses: streaming per-dataset latent statistics and top-k feature sets.

``score_datasets`` runs the model once per batch of a dataset, encodes the selected tokens with every
SAE, and keeps only running sums: per latent, the mean over samples of the per-sample token mean
(``mean``), of the per-sample max (``max``), and of the per-sample firing rate (``frequency``); the
mean residual activation (for the mean-difference measure); reconstruction error (FVU, L0 on this
data); and, per latent, the samples and token positions where it fired most (top-activating contexts).
Memory is ``O(d_sae x top_contexts)`` per dataset and SAE, whatever the dataset size.

``select_features`` turns statistics into a ``FeatureSet``: the top-k latents by contrast against a
reference dataset (score(D) - score(ref), the default) or by absolute score. ``dataset_features`` and
``toxic_features`` are the two uses: a dataset against a reference corpus, and toxic text against
benign text.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from spillover.sae.activations import Sample, TokenSelection, encode_samples, iter_activations
from spillover.sae.load import SAEHandle

__all__ = [
    "Aggregate",
    "FeatureSet",
    "FeatureStats",
    "Selection",
    "dataset_features",
    "default_top_k",
    "score_datasets",
    "select_features",
    "toxic_features",
]

log = logging.getLogger(__name__)

Aggregate = Literal["mean", "max", "frequency"]
Selection = Literal["contrast", "absolute"]


def default_top_k(d_sae: int) -> int:
    """Feature-set size for an SAE: 100 for a 16k SAE (the paper), about 1% of the latents, at least 5."""
    return max(5, min(100, d_sae // 100))


@dataclass
class FeatureStats:
    """Running statistics of one SAE's latents on one dataset (sums; read them through the properties).

    Shapes: ``F = d_sae``, ``D = d_in``, ``M = top_contexts``.
    """

    key: str
    d_sae: int
    d_in: int
    top_contexts: int = 5
    n_samples: int = 0
    """Samples with at least one selected token."""
    n_tokens: int = 0
    sum_mean_F: torch.Tensor = field(init=False)
    sum_max_F: torch.Tensor = field(init=False)
    sum_freq_F: torch.Tensor = field(init=False)
    sum_resid_D: torch.Tensor = field(init=False)
    top_values_FM: torch.Tensor = field(init=False)
    """Per latent, its largest per-sample max activations (descending), ``-inf`` where unfilled."""
    top_samples_FM: torch.Tensor = field(init=False)
    """The sample index (in the dataset) of each ``top_values_FM`` entry, -1 where unfilled."""
    top_positions_FM: torch.Tensor = field(init=False)
    """The token position of that max within its sample."""
    fvu_stride: int = 1
    """FVU is measured on every ``fvu_stride``-th selected token (1: all)."""
    n_fvu_tokens: int = 0
    sq_err: float = 0.0
    sum_x_D: torch.Tensor = field(init=False)
    sum_sq_x: float = 0.0
    n_active: float = 0.0

    def __post_init__(self) -> None:
        f, d, m = self.d_sae, self.d_in, self.top_contexts
        self.sum_mean_F = torch.zeros(f, dtype=torch.float64)
        self.sum_max_F = torch.zeros(f, dtype=torch.float64)
        self.sum_freq_F = torch.zeros(f, dtype=torch.float64)
        self.sum_resid_D = torch.zeros(d, dtype=torch.float64)
        self.sum_x_D = torch.zeros(d, dtype=torch.float64)
        self.top_values_FM = torch.full((f, m), float("-inf"))
        self.top_samples_FM = torch.full((f, m), -1, dtype=torch.long)
        self.top_positions_FM = torch.full((f, m), -1, dtype=torch.long)

    # -- reading ---------------------------------------------------------------------------------------
    def aggregate(self, kind: Aggregate = "mean") -> torch.Tensor:
        """Per-latent dataset score ``(d_sae,)``: mean over samples of the per-sample mean / max / firing rate."""
        total = {"mean": self.sum_mean_F, "max": self.sum_max_F, "frequency": self.sum_freq_F}[kind]
        return (total / max(self.n_samples, 1)).float().cpu()

    @property
    def resid_mean(self) -> torch.Tensor:
        """Mean over samples of the per-sample mean activation at the SAE's site, ``(d_in,)``."""
        return (self.sum_resid_D / max(self.n_samples, 1)).float().cpu()

    @property
    def fvu(self) -> float:
        """Fraction of variance (over this dataset's selected tokens) the SAE does not reconstruct."""
        if self.n_fvu_tokens == 0:
            return float("nan")
        total = self.sum_sq_x - float((self.sum_x_D.double() ** 2).sum()) / self.n_fvu_tokens
        return self.sq_err / max(total, 1e-30)

    @property
    def l0(self) -> float:
        """Mean active latents per selected token."""
        return self.n_active / max(self.n_tokens, 1)

    @property
    def alive(self) -> torch.Tensor:
        """``(d_sae,)`` bool: latents that fired on at least one token of this dataset."""
        return (self.sum_freq_F > 0).cpu()

    # -- writing ---------------------------------------------------------------------------------------
    def _to(self, device: torch.device) -> None:
        if self.sum_mean_F.device != device:
            for name in (
                "sum_mean_F",
                "sum_max_F",
                "sum_freq_F",
                "sum_resid_D",
                "sum_x_D",
                "top_values_FM",
                "top_samples_FM",
                "top_positions_FM",
            ):
                setattr(self, name, getattr(self, name).to(device))

    @torch.no_grad()
    def update(
        self,
        handle: SAEHandle,
        acts_ND: torch.Tensor,
        token_sample: torch.Tensor,
        positions: torch.Tensor,
        sample_ids: Sequence[int],
    ) -> None:
        """Add one batch: ``acts_ND`` are the selected tokens' activations, ``token_sample`` their batch rows.

        Latent activations are assumed non-negative (ReLU, JumpReLU, TopK, gated SAEs). Every reduction
        runs over the nonzero codes only, so its cost scales with the SAE's L0, not its width.
        """
        n_rows, f = len(sample_ids), self.d_sae
        if acts_ND.shape[0] == 0:
            return
        feats_NF = handle.encode(acts_ND)
        device = feats_NF.device
        self._to(device)
        x_ND = acts_ND.to(device).float()
        rows = token_sample.to(device)
        counts_B = torch.bincount(rows, minlength=n_rows)
        valid = counts_B > 0
        denom_B = counts_B.clamp(min=1).float()
        tok_nz, lat_nz = feats_NF.nonzero(as_tuple=True)
        val_nz = feats_NF[tok_nz, lat_nz]
        flat = rows[tok_nz] * f + lat_nz
        sum_BF = torch.zeros(n_rows * f, device=device).index_add_(0, flat, val_nz).view(n_rows, f)
        fired_BF = (
            torch.zeros(n_rows * f, device=device).index_add_(0, flat, (val_nz > 0).float()).view(n_rows, f)
        )
        max_flat = torch.zeros(n_rows * f, device=device).scatter_reduce_(0, flat, val_nz, "amax")
        resid_BD = torch.zeros(n_rows, self.d_in, device=device).index_add_(0, rows, x_ND)
        self.n_samples += int(valid.sum())
        self.n_tokens += acts_ND.shape[0]
        self.sum_mean_F += (sum_BF / denom_B[:, None]).sum(0).double()
        self.sum_freq_F += (fired_BF / denom_B[:, None]).sum(0).double()
        self.sum_max_F += max_flat.view(n_rows, f).sum(0).double()
        self.sum_resid_D += (resid_BD[valid] / denom_B[valid, None]).sum(0).double()
        # FVU is a diagnostic: estimate it on every fvu_stride-th token to save a decode per batch.
        sub = slice(None, None, self.fvu_stride)
        x_sub = x_ND[sub]
        recon_ND = handle.decode(feats_NF[sub]).to(device)
        self.sq_err += float(((recon_ND.double() - x_sub.double()) ** 2).sum())
        self.sum_x_D += x_sub.double().sum(0)
        self.sum_sq_x += float((x_sub.double() ** 2).sum())
        self.n_fvu_tokens += x_sub.shape[0]
        self.n_active += float(tok_nz.numel())
        if self.top_contexts:
            # Position of each (row, latent) maximum: among the codes equal to their row's max, the first.
            is_max = val_nz == max_flat[flat]
            argmax_flat = torch.full((n_rows * f,), -1, dtype=torch.long, device=device).scatter_reduce_(
                0, flat[is_max], positions.to(device)[tok_nz[is_max]], "amin", include_self=False
            )
            ids_B = torch.tensor(list(sample_ids), dtype=torch.long, device=device)
            max_BF, argmax_BF = max_flat.view(n_rows, f), argmax_flat.view(n_rows, f)
            cand_v = torch.cat([self.top_values_FM, max_BF[valid].T], dim=1)
            cand_s = torch.cat([self.top_samples_FM, ids_B[valid].expand(f, -1)], dim=1)
            cand_p = torch.cat([self.top_positions_FM, argmax_BF[valid].T], dim=1)
            best = cand_v.topk(self.top_contexts, dim=1).indices
            self.top_values_FM = cand_v.gather(1, best)
            self.top_samples_FM = cand_s.gather(1, best)
            self.top_positions_FM = cand_p.gather(1, best)

    @classmethod
    def pooled(cls, parts: Sequence[FeatureStats], key: str | None = None) -> FeatureStats:
        """The statistics of the union of several datasets (sample-weighted; top contexts are not kept)."""
        if not parts:
            raise ValueError("pooled needs at least one FeatureStats")
        first = parts[0]
        if any(p.d_sae != first.d_sae or p.d_in != first.d_in for p in parts):
            raise ValueError("cannot pool statistics of different SAEs")
        out = cls(key or first.key, first.d_sae, first.d_in, top_contexts=0)
        for p in parts:
            out.n_samples += p.n_samples
            out.n_tokens += p.n_tokens
            out.sum_mean_F += p.sum_mean_F.cpu()
            out.sum_max_F += p.sum_max_F.cpu()
            out.sum_freq_F += p.sum_freq_F.cpu()
            out.sum_resid_D += p.sum_resid_D.cpu()
            out.n_fvu_tokens += p.n_fvu_tokens
            out.sq_err += p.sq_err
            out.sum_x_D += p.sum_x_D.cpu()
            out.sum_sq_x += p.sum_sq_x
            out.n_active += p.n_active
        return out

    def contexts(self, latent: int) -> list[tuple[int, int, float]]:
        """``(sample index, token position, activation)`` of the latent's top-activating samples (> 0)."""
        return [
            (int(s), int(p), float(v))
            for v, s, p in zip(
                self.top_values_FM[latent],
                self.top_samples_FM[latent],
                self.top_positions_FM[latent],
                strict=True,
            )
            if s >= 0 and v > 0
        ]


def score_datasets(
    model: nn.Module,
    tokenizer: Any,
    datasets: Mapping[str, Sequence[Sample]],
    saes: Sequence[SAEHandle],
    *,
    tokens: TokenSelection = "assistant",
    batch_size: int = 32,
    max_tokens: int | None = None,
    max_len: int | None = None,
    top_contexts: int = 5,
    fvu_stride: int = 4,
) -> dict[str, dict[str, FeatureStats]]:
    """Latent statistics of every dataset under every SAE, from one early-stopped pass per batch.

    Args:
        model: an HF causal LM in eval mode.
        tokenizer: its tokenizer.
        datasets: name -> samples (conversations, or raw strings for plain-text corpora).
        saes: SAEs bound to sites of ``model`` (one forward pass serves all of them).
        tokens: which tokens of conversations count (assistant answers by default).
        batch_size: samples per forward pass.
        max_tokens: cap on padded tokens per batch.
        max_len: truncate samples to this many tokens.
        top_contexts: how many top-activating samples to remember per latent.
        fvu_stride: measure the SAE's reconstruction error on every n-th selected token (1: all).

    Returns:
        ``{dataset name: {sae key: FeatureStats}}``.
    """
    if not saes:
        raise ValueError("score_datasets needs at least one SAE")
    keys = [h.key for h in saes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two SAEs read the same site: {keys}")
    sites = list(dict.fromkeys(h.site for h in saes))
    if max_len is None:
        value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        max_len = value if isinstance(value, int) else None
    out: dict[str, dict[str, FeatureStats]] = {}
    for name, samples in datasets.items():
        stats = {
            h.key: FeatureStats(h.key, h.d_sae, h.d_in, top_contexts, fvu_stride=fvu_stride) for h in saes
        }
        encoded = encode_samples(tokenizer, samples, tokens=tokens, max_len=max_len)
        for batch in iter_activations(
            model,
            tokenizer,
            samples,
            sites,
            encoded=encoded,
            batch_size=batch_size,
            max_tokens=max_tokens,
            description=f"scoring {name}",
        ):
            for h in saes:
                stats[h.key].update(
                    h, batch.acts[h.site], batch.token_sample, batch.positions, batch.sample_ids
                )
        n_empty = len(samples) - next(iter(stats.values())).n_samples
        if n_empty:
            log.warning(
                "dataset %s: %d of %d samples have no %s tokens and are ignored",
                name,
                n_empty,
                len(samples),
                tokens,
            )
        out[name] = stats
    return out


class FeatureSet(NamedTuple):
    """A dataset's top latents under one SAE."""

    indices: torch.Tensor
    """``(k,)`` long: latent indices, best first."""
    scores: torch.Tensor
    """``(k,)``: their selection scores (contrast or absolute aggregate)."""
    aggregate: str
    selection: str


def select_features(
    stats: FeatureStats,
    reference: FeatureStats | None = None,
    *,
    k: int | None = None,
    aggregate: Aggregate = "mean",
    selection: Selection = "contrast",
) -> FeatureSet:
    """The top-k latents of a dataset, by contrast against a reference (default) or absolute score.

    Only latents with a positive score are kept (a latent less active than on the reference is not
    "tied to" the dataset), so a set can be smaller than ``k``; that is logged.

    Args:
        stats: the dataset's statistics.
        reference: the reference dataset's statistics (required for ``selection="contrast"``).
        k: set size (default ``default_top_k(d_sae)``).
        aggregate: per-latent dataset score: mean activation, mean per-sample max, or firing frequency.
        selection: ``"contrast"``: score(D) - score(ref); ``"absolute"``: score(D).
    """
    k = k if k is not None else default_top_k(stats.d_sae)
    score_F = stats.aggregate(aggregate)
    if selection == "contrast":
        if reference is None:
            raise ValueError("selection='contrast' needs a reference dataset's statistics")
        if reference.d_sae != stats.d_sae:
            raise ValueError(
                f"reference has {reference.d_sae} latents, dataset {stats.d_sae}: not the same SAE"
            )
        score_F = score_F - reference.aggregate(aggregate)
    elif selection != "absolute":
        raise ValueError(f"selection must be 'contrast' or 'absolute', got {selection!r}")
    values, indices = score_F.topk(min(k, stats.d_sae))
    keep = values > 0
    if int(keep.sum()) < k:
        log.info(
            "%s: only %d latents have a positive %s score (k=%d)", stats.key, int(keep.sum()), selection, k
        )
    return FeatureSet(indices[keep], values[keep], aggregate, selection)


def dataset_features(
    stats: FeatureStats,
    reference: FeatureStats | None,
    *,
    k: int | None = None,
    aggregate: Aggregate = "mean",
    selection: Selection = "contrast",
) -> FeatureSet:
    """Latents tied to a dataset: top-k by contrast with a reference corpus (or absolute)."""
    return select_features(stats, reference, k=k, aggregate=aggregate, selection=selection)


def toxic_features(
    toxic: FeatureStats, benign: FeatureStats, *, k: int | None = None, aggregate: Aggregate = "mean"
) -> FeatureSet:
    """Toxic latents: top-k by contrast of toxic text (or harmful answers) against benign text."""
    return select_features(toxic, benign, k=k, aggregate=aggregate, selection="contrast")
