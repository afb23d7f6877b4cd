"""SAEs for spillover: activation sites, SAELens loading in one layout, TopK training, activations.

Python::

    from spillover.sae import load_sae, site_for_layer, collect_activations
    sae = load_sae("gemma-scope-2b-pt-res-canonical:layer_12/width_16k/canonical", model)
    acts = collect_activations(model, tokenizer, conversations, [sae.site], reduce="mean")
    feats = sae.encode(torch.stack(acts[sae.site]))      # (n_samples, d_sae)
    w_dec = sae.decoder()                                 # (d_sae, d_in), unit rows
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spillover.sae.activations import (
        ActivationBatch,
        EncodedSample,
        Sample,
        TokenSelection,
        collect_activations,
        encode_samples,
        iter_activations,
        length_batches,
    )
    from spillover.sae.load import SAEHandle, SAELoadError, expand_sae_spec, load_sae, load_saes, wrap_sae
    from spillover.sae.sites import (
        Site,
        SiteError,
        capture,
        decoder_layers,
        final_norm,
        num_layers,
        resolve_module,
        site_for_layer,
        site_from_hook_name,
        site_from_sae_metadata,
    )
    from spillover.sae.train import (
        SAEQuality,
        SAETrainConfig,
        TrainedSAE,
        collect_training_activations,
        measure_quality,
        train_sae,
        train_sae_on_activations,
    )

# Imported on first use, so `spillover --help` does not pay for torch here.
_EXPORTS = {
    "ActivationBatch": "spillover.sae.activations",
    "EncodedSample": "spillover.sae.activations",
    "Sample": "spillover.sae.activations",
    "TokenSelection": "spillover.sae.activations",
    "collect_activations": "spillover.sae.activations",
    "encode_samples": "spillover.sae.activations",
    "iter_activations": "spillover.sae.activations",
    "length_batches": "spillover.sae.activations",
    "SAEHandle": "spillover.sae.load",
    "SAELoadError": "spillover.sae.load",
    "expand_sae_spec": "spillover.sae.load",
    "load_sae": "spillover.sae.load",
    "load_saes": "spillover.sae.load",
    "wrap_sae": "spillover.sae.load",
    "Site": "spillover.sae.sites",
    "SiteError": "spillover.sae.sites",
    "capture": "spillover.sae.sites",
    "decoder_layers": "spillover.sae.sites",
    "final_norm": "spillover.sae.sites",
    "num_layers": "spillover.sae.sites",
    "resolve_module": "spillover.sae.sites",
    "site_for_layer": "spillover.sae.sites",
    "site_from_hook_name": "spillover.sae.sites",
    "site_from_sae_metadata": "spillover.sae.sites",
    "SAEQuality": "spillover.sae.train",
    "SAETrainConfig": "spillover.sae.train",
    "TrainedSAE": "spillover.sae.train",
    "collect_training_activations": "spillover.sae.train",
    "measure_quality": "spillover.sae.train",
    "train_sae": "spillover.sae.train",
    "train_sae_on_activations": "spillover.sae.train",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ActivationBatch",
    "EncodedSample",
    "SAEHandle",
    "SAELoadError",
    "SAEQuality",
    "SAETrainConfig",
    "Sample",
    "Site",
    "SiteError",
    "TokenSelection",
    "TrainedSAE",
    "capture",
    "collect_activations",
    "collect_training_activations",
    "decoder_layers",
    "encode_samples",
    "expand_sae_spec",
    "final_norm",
    "iter_activations",
    "length_batches",
    "load_sae",
    "load_saes",
    "measure_quality",
    "num_layers",
    "resolve_module",
    "site_for_layer",
    "site_from_hook_name",
    "site_from_sae_metadata",
    "train_sae",
    "train_sae_on_activations",
    "wrap_sae",
]
