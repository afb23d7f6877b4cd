"""Train a TopK SAE with SAELens for a model that has none (e.g. the model organism).

The activations are collected once (``spillover.sae.activations``) and kept in memory; SAELens'
``SAETrainer`` then trains a ``TopKTrainingSAE`` from an iterator of shuffled batches over them
(several passes when ``training_tokens`` exceeds the collected count). Activations are rescaled to
unit mean squared norm during training (as SAELens' ``expected_average_only_in`` does) and the factor is
folded back afterwards, so the saved SAE reads raw activations.

The SAE is saved with ``save_inference_model`` in SAELens' own format (``cfg.json`` +
``sae_weights.safetensors``), with ``hook_name``/``hf_hook_name`` metadata naming the HF module, so it
loads back through ``spillover.sae.load.load_sae`` or ``SAE.load_from_disk`` like any hub SAE.
Reconstruction quality (FVU, L0, dead fraction) is measured on held-out activations and written to
``training.json`` and into the SAE's metadata.

Command line: ``spillover sae train --model DIR --data a.jsonl --layers 1 --out saes/``.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import torch
from torch import nn

from spillover.config import to_dict
from spillover.progress import enabled as progress_enabled
from spillover.sae.activations import Sample, TokenSelection, iter_activations
from spillover.sae.load import SAEHandle, wrap_sae
from spillover.sae.sites import Site, num_layers, site_for_layer

__all__ = [
    "SAEQuality",
    "SAETrainConfig",
    "TrainedSAE",
    "collect_training_activations",
    "measure_quality",
    "train_layer_saes",
    "train_sae",
    "train_sae_on_activations",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SAETrainConfig:
    """A TopK SAE and how it is trained."""

    d_sae: int = 1024
    """Number of latents."""
    k: int = 16
    """Active latents per token (the L0)."""
    training_tokens: int = 2_000_000
    """Activations seen in training (collected activations are repeated in shuffled passes)."""
    batch_size: int = 1024
    """Activations per step."""
    lr: float = 1e-3
    """Adam learning rate."""
    lr_end_ratio: float = 0.1
    """Final learning rate as a fraction of ``lr`` (linear decay over the last ``decay_fraction``)."""
    warmup_fraction: float = 0.02
    """Share of steps with a linear warm-up."""
    decay_fraction: float = 0.2
    """Share of steps with the final linear decay."""
    aux_loss_coefficient: float = 1.0
    """Weight of the TopK auxiliary loss that revives dead latents (SAELens' default; Gao et al. use 1/32;
    measured: docs/results.md#organism-geometry)."""
    dead_feature_window: int = 200
    """Steps without firing after which a latent counts as dead for the auxiliary loss."""
    holdout_fraction: float = 0.05
    """Share of collected activations kept out of training to measure FVU, L0 and dead latents."""
    seed: int = 0
    """Seeds the initialisation and the batch order."""

    def __post_init__(self) -> None:
        if self.d_sae < 1 or not 0 < self.k <= self.d_sae:
            raise ValueError(f"need 0 < k <= d_sae, got k={self.k}, d_sae={self.d_sae}")
        if self.training_tokens < self.batch_size or self.batch_size < 1:
            raise ValueError(
                f"training_tokens ({self.training_tokens}) must be >= batch_size ({self.batch_size}) >= 1"
            )
        if self.lr <= 0 or not 0 < self.lr_end_ratio <= 1:
            raise ValueError(f"lr must be > 0 and lr_end_ratio in (0, 1], got {self.lr}, {self.lr_end_ratio}")
        if not 0 <= self.warmup_fraction < 1 or not 0 <= self.decay_fraction < 1:
            raise ValueError("warmup_fraction and decay_fraction must be in [0, 1)")
        if not 0 < self.holdout_fraction < 0.5:
            raise ValueError(f"holdout_fraction must be in (0, 0.5), got {self.holdout_fraction}")


class SAEQuality(NamedTuple):
    """Reconstruction quality on held-out activations."""

    fvu: float
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    l0: float
    """Mean number of active latents per token."""
    dead_fraction: float
    """Share of latents that never fire on the held-out activations."""
    n_tokens: int
    """Held-out activations measured."""

    def as_dict(self) -> dict[str, float | int]:
        return dict(self._asdict())


class TrainedSAE(NamedTuple):
    handle: SAEHandle
    quality: SAEQuality
    """Measured on held-out activations."""
    train_quality: SAEQuality
    """Measured on (a sample of) the training activations."""
    path: Path | None
    """The saved SAELens folder, when ``out_dir`` was given."""


@torch.no_grad()
def measure_quality(handle: SAEHandle, acts_ND: torch.Tensor, *, batch_size: int = 4096) -> SAEQuality:
    """FVU, L0 and dead-latent share of an SAE on activations ``(N, d_in)``."""
    n = acts_ND.shape[0]
    if n == 0:
        raise ValueError("measure_quality needs at least one activation")
    x = acts_ND.double()
    total_var = float(((x - x.mean(0)) ** 2).sum())
    err = 0.0
    active = 0.0
    fired = torch.zeros(handle.d_sae, dtype=torch.bool, device=handle.device)
    for start in range(0, n, batch_size):
        chunk = acts_ND[start : start + batch_size].to(handle.device)
        feats = handle.encode(chunk)
        recon = handle.decode(feats)
        err += float(((recon.double() - chunk.double()) ** 2).sum())
        nz = feats != 0
        active += float(nz.sum())
        fired |= nz.any(0)
    return SAEQuality(
        fvu=err / max(total_var, 1e-30),
        l0=active / n,
        dead_fraction=float((~fired).float().mean()),
        n_tokens=n,
    )


def _batches(acts_ND: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(acts_ND.shape[0], generator=gen)
        for start in range(0, acts_ND.shape[0] - batch_size + 1, batch_size):
            yield acts_ND[order[start : start + batch_size]]


@contextmanager
def _quiet_trainer() -> Iterator[None]:
    # SAETrainer draws its own tqdm bar; keep it off unless spillover's own bars are on.
    from sae_lens.training import sae_trainer

    if progress_enabled():
        yield
        return
    with mock.patch.object(sae_trainer, "tqdm", partial(sae_trainer.tqdm, disable=True)):
        yield


def train_sae_on_activations(
    acts_ND: torch.Tensor,
    cfg: SAETrainConfig,
    *,
    site: Site,
    model: nn.Module | None = None,
    model_name: str = "",
    out_dir: str | Path | None = None,
    device: str | None = None,
) -> TrainedSAE:
    """Train a TopK SAE on activations and save it in SAELens format.

    Args:
        acts_ND: ``(N, d_in)`` activations (any float dtype; trained in float32).
        cfg: SAE shape and training schedule.
        site: where the activations were read (recorded as ``hook_name``/``hf_hook_name``).
        model: the model (for the width/site checks of the returned handle).
        model_name: recorded in the SAE's metadata.
        out_dir: folder to save the SAE in (``cfg.json``, ``sae_weights.safetensors``, ``training.json``).
        device: training device (default: CUDA if available, else CPU).

    Returns:
        The trained SAE, loaded back from disk, and its held-out and training reconstruction quality.
        The SAE lives where ``load_sae`` would put it: on the model's device, else on ``acts_ND``'s,
        whatever device it was trained on, so it reads the caller's activations as they are.
    """
    train_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    home = next(model.parameters()).device if model is not None else acts_ND.device
    acts_ND = acts_ND.float()
    gen = torch.Generator().manual_seed(cfg.seed)
    held_ND, train_ND = _split_heldout(acts_ND, cfg, gen)
    steps = cfg.training_tokens // cfg.batch_size
    log.info(
        "training a %d-latent TopK(k=%d) SAE on %d activations of width %d (%.1f passes)",
        cfg.d_sae,
        cfg.k,
        train_ND.shape[0],
        acts_ND.shape[1],
        cfg.training_tokens / train_ND.shape[0],
    )
    # Train on activations scaled to mean squared norm d_in (as SAELens' expected_average_only_in does),
    # so one learning rate fits any model; the factor is folded into the weights afterwards.
    scale = math.sqrt(acts_ND.shape[1]) / float(train_ND.norm(dim=-1).mean().clamp(min=1e-8))
    scaled_ND = train_ND * scale
    trained = _fit(scaled_ND, cfg, site=site, model_name=model_name, steps=steps, device=train_device)
    trained.fold_activation_norm_scaling_factor(scale)
    train_ND = scaled_ND / scale
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(out_dir) if out_dir is not None else Path(tmp)
        source = str(target) if out_dir is not None else "<memory>"
        trained.save_inference_model(target)
        handle = _load_trained(target, model, site, source=source, device=train_device)
        quality = measure_quality(handle, held_ND)
        sample = train_ND[torch.randperm(train_ND.shape[0], generator=gen)[: max(held_ND.shape[0], 4096)]]
        train_quality = measure_quality(handle, sample)
        if out_dir is not None:
            _record(target, cfg, quality, train_quality, n_train=train_ND.shape[0], steps=steps)
        if handle.device != home:
            handle = _load_trained(target, model, site, source=source, device=home)
    log.info(
        "SAE quality (held-out %d tokens): FVU %.4f, L0 %.1f, dead %.1f%%",
        quality.n_tokens,
        quality.fvu,
        quality.l0,
        100 * quality.dead_fraction,
    )
    return TrainedSAE(handle, quality, train_quality, Path(out_dir) if out_dir is not None else None)


def _split_heldout(
    acts_ND: torch.Tensor, cfg: SAETrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(held-out, training)`` activations: a random ``cfg.holdout_fraction`` (at least one) held out."""
    n = acts_ND.shape[0]
    perm = torch.randperm(n, generator=gen)
    n_hold = max(1, int(round(n * cfg.holdout_fraction)))
    held_ND, train_ND = acts_ND[perm[:n_hold]], acts_ND[perm[n_hold:]]
    if train_ND.shape[0] < cfg.batch_size:
        raise ValueError(
            f"only {train_ND.shape[0]} training activations for batch_size {cfg.batch_size}; collect more data"
        )
    return held_ND, train_ND


def _fit(
    train_ND: torch.Tensor, cfg: SAETrainConfig, *, site: Site, model_name: str, steps: int, device: str
) -> Any:
    """Train a SAELens ``TopKTrainingSAE`` on (scaled) activations with SAELens' ``SAETrainer``."""
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    torch.manual_seed(cfg.seed)
    sae_cfg = TopKTrainingSAEConfig(
        d_in=train_ND.shape[1],
        d_sae=cfg.d_sae,
        k=cfg.k,
        aux_loss_coefficient=cfg.aux_loss_coefficient,
        device=device,
    )
    sae_cfg.metadata.hook_name = site.module_path
    sae_cfg.metadata.hf_hook_name = site.module_path
    sae_cfg.metadata.model_name = model_name
    sae_cfg.metadata.spillover_site_io = site.io
    sae = TopKTrainingSAE(sae_cfg)
    with torch.no_grad():
        # Start the decoder bias at the data mean, a standard SAE initialisation.
        sae.b_dec.data.copy_(train_ND.mean(0).to(sae.b_dec.device))
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * cfg.batch_size,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr * cfg.lr_end_ratio,
        lr_scheduler_name="constant",
        lr_warm_up_steps=int(steps * cfg.warmup_fraction),
        lr_decay_steps=int(steps * cfg.decay_fraction),
        device=device,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=max(steps, 1),
    )
    with _quiet_trainer():
        trainer = SAETrainer(
            cfg=trainer_cfg, sae=sae, data_provider=_batches(train_ND, cfg.batch_size, cfg.seed)
        )
        return trainer.fit()


def _load_trained(
    folder: Path, model: nn.Module | None, site: Site, *, source: str, device: str | torch.device
) -> SAEHandle:
    """The saved SAE as a handle on ``device``, bound to ``model`` (or to ``site`` without one)."""
    from sae_lens import SAE

    handle = wrap_sae(SAE.load_from_disk(folder, device=str(device)), model, source=source, layer=site.layer)
    if model is None:
        handle = SAEHandle(sae=handle.sae, site=site, source=handle.source, _scale=handle._scale)
    return handle


def _record(
    folder: Path,
    cfg: SAETrainConfig,
    quality: SAEQuality,
    train_quality: SAEQuality,
    *,
    n_train: int,
    steps: int,
) -> None:
    cfg_path = folder / "cfg.json"
    saved = json.loads(cfg_path.read_text())
    saved.setdefault("metadata", {})
    saved["metadata"].update(
        {"fvu": quality.fvu, "heldout_l0": quality.l0, "dead_fraction": quality.dead_fraction}
    )
    cfg_path.write_text(json.dumps(saved))
    (folder / "training.json").write_text(
        json.dumps(
            {
                "config": to_dict(cfg),
                "n_train_activations": n_train,
                "steps": steps,
                "passes": cfg.training_tokens / max(n_train, 1),
                "heldout": quality.as_dict(),
                "train": train_quality.as_dict(),
            },
            indent=2,
        )
    )


def collect_training_activations(
    model: nn.Module,
    tokenizer: Any,
    samples: Sequence[Sample],
    site: Site,
    *,
    tokens: TokenSelection = "all",
    batch_size: int = 32,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """All selected tokens' activations at ``site`` stacked as ``(N, d)`` float32 on the CPU."""
    chunks: list[torch.Tensor] = []
    total = 0
    for batch in iter_activations(
        model, tokenizer, samples, [site], tokens=tokens, batch_size=batch_size, description="SAE data"
    ):
        acts = batch.acts[site].float().cpu()
        chunks.append(acts)
        total += acts.shape[0]
        if max_tokens is not None and total >= max_tokens:
            break
    acts_ND = torch.cat(chunks)
    return acts_ND[:max_tokens] if max_tokens is not None else acts_ND


def train_sae(
    model: nn.Module,
    tokenizer: Any,
    samples: Sequence[Sample],
    site: Site,
    cfg: SAETrainConfig,
    *,
    tokens: TokenSelection = "all",
    out_dir: str | Path | None = None,
    batch_size: int = 32,
    model_name: str = "",
) -> TrainedSAE:
    """Collect activations of ``samples`` at ``site`` and train a TopK SAE on them.

    Args:
        model: an HF causal LM.
        tokenizer: its tokenizer.
        samples: conversations or raw texts (the SAE's training distribution).
        site: where to read (e.g. ``site_for_layer(model, 1)``).
        cfg: SAE shape and schedule.
        tokens: which tokens to train on (``"all"`` non-special tokens by default).
        out_dir: where to save the SAE (SAELens format).
        batch_size: samples per forward pass when collecting.
        model_name: recorded in the SAE's metadata.
    """
    acts_ND = collect_training_activations(
        model, tokenizer, samples, site, tokens=tokens, batch_size=batch_size
    )
    if not math.isfinite(float(acts_ND.abs().max())):
        raise ValueError(f"non-finite activations at {site}; check the model's dtype")
    return train_sae_on_activations(
        acts_ND, cfg, site=site, model=model, model_name=model_name, out_dir=out_dir
    )


def train_layer_saes(
    model: nn.Module,
    tokenizer: Any,
    samples: Sequence[Sample],
    layers: Sequence[int],
    cfg: SAETrainConfig,
    out_dir: str | Path,
    *,
    tokens: TokenSelection = "all",
    batch_size: int = 32,
    model_name: str = "",
) -> list[TrainedSAE]:
    """One TopK SAE per decoder layer at its residual output, saved as ``out_dir/layer_<L>``.

    Every layer is resolved before any activation is collected, so a layer the model lacks fails at once.

    Args:
        model: an HF causal LM.
        tokenizer: its tokenizer.
        samples: conversations or raw texts (the SAEs' training distribution).
        layers: decoder layers (empty: every layer).
        cfg: SAE shape and schedule, the same for every layer.
        out_dir: the folder of ``layer_<L>/`` SAELens folders.
        tokens: which tokens to train on.
        batch_size: samples per forward pass when collecting.
        model_name: recorded in the SAEs' metadata.
    """
    if not samples:
        raise ValueError("no training samples for the SAEs")
    sites = [site_for_layer(model, layer) for layer in (layers or range(num_layers(model)))]
    trained: list[TrainedSAE] = []
    for site in sites:
        acts_ND = collect_training_activations(
            model, tokenizer, samples, site, tokens=tokens, batch_size=batch_size
        )
        trained.append(
            train_sae_on_activations(
                acts_ND,
                cfg,
                site=site,
                model=model,
                model_name=model_name,
                out_dir=Path(out_dir) / f"layer_{site.layer}",
            )
        )
    return trained
