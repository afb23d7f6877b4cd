"""Load SAEs through SAELens into one layout: unit decoder rows ``(d_sae, d_in)``, folded activations.

``load_sae`` accepts a local SAELens folder (``cfg.json`` + ``sae_weights.safetensors``, as written by
``SAE.save_model`` or spillover's own trainer) or a hub release ``"<release>:<sae_id>"`` such as
``gemma-scope-2b-pt-res-canonical:layer_12/width_16k/canonical``. Decoder norms are folded into the
encoder, so a latent's activation is its contribution's size along a unit direction and activations
compare across latents (Neuronpedia values are post-fold). For architectures where SAELens cannot fold
(TopK without ``rescale_acts_by_decoder_norm``, where folding would change which latents win), the
encoder is left alone and ``encode`` multiplies by the decoder norms instead, which is the same number.

The loader checks that the SAE's input width equals the model's hidden size and that its layer/site
exists in the model, so a mismatched SAE fails at load time with both numbers in the message.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from spillover.sae.sites import Site, SiteError, site_for_layer, site_from_sae_metadata

__all__ = [
    "SAEHandle",
    "SAELoadError",
    "SAESource",
    "check_sae_spec",
    "expand_sae_spec",
    "load_sae",
    "load_saes",
    "read_sae",
    "wrap_sae",
]

log = logging.getLogger(__name__)


class SAELoadError(ValueError):
    """An SAE cannot be loaded or does not fit the model."""


@dataclass(eq=False)
class SAEHandle:
    """A loaded SAE bound to the site of the model it reads.

    Attributes:
        sae: the SAELens ``SAE`` (decoder norms folded where the architecture allows).
        site: where it reads the model.
        source: the folder or ``release:sae_id`` it came from.
    """

    sae: Any
    site: Site
    source: str
    _scale: torch.Tensor | None = field(default=None, repr=False)
    _decoder: torch.Tensor | None = field(default=None, repr=False)

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def layer(self) -> int | None:
        return self.site.layer

    @property
    def key(self) -> str:
        """The name results are filed under (``layer_12`` for a residual SAE at block 12)."""
        return self.site.label

    @property
    def device(self) -> torch.device:
        return torch.device(self.sae.W_dec.device)

    @torch.no_grad()
    def encode(self, acts_ND: torch.Tensor) -> torch.Tensor:
        """Latent activations ``(N, d_sae)`` (float32) of activations ``(N, d_in)`` (any dtype/device)."""
        if acts_ND.shape[-1] != self.d_in:
            raise SAELoadError(
                f"activations have width {acts_ND.shape[-1]} but the SAE {self.source} expects {self.d_in}"
            )
        feats = self.sae.encode(acts_ND.to(device=self.device, dtype=self.sae.W_dec.dtype))
        if self._scale is not None:
            feats = feats * self._scale
        return feats.float()

    @torch.no_grad()
    def decode(self, feats_NF: torch.Tensor) -> torch.Tensor:
        """Reconstructions ``(N, d_in)`` (float32) of latent activations as returned by ``encode``.

        For the usual affine decoders (``x_hat = f @ W_dec + b_dec``) and very sparse codes (under 1% of
        latents active, e.g. a 16k SAE at L0 100) a sparse matrix product over the active latents' unit
        directions replaces the dense one (same result, less work at that size).
        """
        feats = feats_NF.to(device=self.device, dtype=self.sae.W_dec.dtype)
        if _affine_decoder(self.sae) and feats.dim() == 2 and int((feats != 0).sum()) < 0.01 * feats.numel():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                out = feats.float().to_sparse_csr() @ self._effective_decoder()
            return out + self.sae.b_dec.float()
        if self._scale is not None:
            feats = feats / self._scale.clamp(min=1e-8)
        return self.sae.decode(feats).float()

    def _effective_decoder(self) -> torch.Tensor:
        """The rows ``decode`` multiplies ``encode``'s codes by: unit rows when codes carry the decoder norm."""
        if self._scale is not None or getattr(self.sae.cfg, "rescale_acts_by_decoder_norm", False):
            return self.decoder()
        return self.sae.W_dec.detach().float()

    @torch.no_grad()
    def decoder(self) -> torch.Tensor:
        """Unit-norm decoder directions ``(d_sae, d_in)``, float32, one row per latent."""
        if self._decoder is None:
            w_dec_FD = self.sae.W_dec.detach().float()
            self._decoder = w_dec_FD / w_dec_FD.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        return self._decoder


_AFFINE = ("standard", "topk", "jumprelu", "gated", "batchtopk")


def _affine_decoder(sae: Any) -> bool:
    """Whether ``decode`` is ``f @ W_dec + b_dec`` (after folding), so a sparse sum is exact."""
    cfg = sae.cfg
    return (
        cfg.architecture() in _AFFINE
        and cfg.normalize_activations == "none"
        and cfg.reshape_activations == "none"
        and getattr(cfg, "d_out", cfg.d_in) == cfg.d_in
        and not getattr(cfg, "apply_finetuning_scaling_factor", False)
    )


def _fold(sae: Any) -> torch.Tensor | None:
    """Fold decoder norms; return the per-latent scale ``encode`` must apply when folding is impossible."""
    try:
        sae.fold_W_dec_norm()
        return None
    except NotImplementedError:
        norms = sae.W_dec.detach().norm(dim=-1)
        if torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
            return None
        log.info("%s cannot fold decoder norms; scaling its activations by them instead", type(sae).__name__)
        return norms


def _model_width(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            return value
    text_cfg = getattr(cfg, "text_config", None)
    value = getattr(text_cfg, "hidden_size", None)
    return value if isinstance(value, int) else None


def wrap_sae(
    sae: Any, model: nn.Module | None, *, source: str, layer: int | None = None, fold: bool = True
) -> SAEHandle:
    """Bind an SAELens SAE to a model site after checking that it fits.

    Args:
        sae: a SAELens ``SAE``.
        model: the HF model it will read (None skips the checks; the site then comes from ``layer``).
        source: where it came from, for messages.
        layer: the decoder layer; overrides the SAE's metadata (hook names name the layer too).
        fold: fold decoder norms (see module docstring).
    """
    meta = sae.cfg.metadata
    if model is not None:
        width = _model_width(model)
        if width is not None and int(sae.cfg.d_in) != width:
            raise SAELoadError(
                f"SAE {source} reads width d_in={sae.cfg.d_in} but the model {type(model).__name__} has hidden "
                f"size {width}; use an SAE trained on this model (hook {meta.get('hook_name')!r})"
            )
        try:
            if meta.get("hf_hook_name") or meta.get("hook_name"):
                site = site_from_sae_metadata(model, meta)
            elif layer is not None:
                site = site_for_layer(model, layer)
            else:
                raise SiteError(
                    "its metadata names no hook (hook_name / hf_hook_name); pass the layer explicitly"
                )
        except SiteError as exc:
            raise SAELoadError(f"SAE {source}: {exc}") from exc
        if layer is not None and site.layer is not None and site.layer != layer:
            raise SAELoadError(
                f"SAE {source} was trained on layer {site.layer} ({site.module_path}:{site.io}) but layer {layer} "
                "was requested; load the SAE of that layer"
            )
        if site.layer is None and layer is not None:
            site = Site(site.module_path, site.io, layer)
    else:
        if layer is None:
            layer = _metadata_layer(meta)
        if layer is None:
            raise SAELoadError(f"SAE {source}: no model given and no layer in its metadata; pass layer=")
        site = Site(f"model.layers.{layer}", "output", layer)
    scale = _fold(sae) if fold else None
    sae.eval()
    for p in sae.parameters():
        p.requires_grad_(False)
    return SAEHandle(sae=sae, site=site, source=source, _scale=scale)


def _metadata_layer(meta: Any) -> int | None:
    for key in ("hf_hook_name", "hook_name"):
        value = meta.get(key) if hasattr(meta, "get") else None
        if value:
            m = re.search(r"(?:blocks|layers|\.h)\.(\d+)", str(value))
            if m:
                return int(m.group(1))
    return None


class SAESource(NamedTuple):
    sae: Any
    """The SAELens ``SAE``, as stored (no folding, bound to no model)."""
    source: str
    """The folder or ``release:sae_id`` it came from, for messages."""


def check_sae_spec(spec: str | Path) -> None:
    """Fail fast on a spec that cannot name an SAE: a folder without ``cfg.json``, or neither a folder nor
    ``release:sae_id`` (a hub release is checked when it is loaded).

    Raises:
        SAELoadError: naming the spec and what was expected.
    """
    path = Path(spec)
    if path.is_dir():
        if not (path / "cfg.json").is_file():
            raise SAELoadError(
                f"{path} is not a SAELens SAE folder (no cfg.json); expected the output of SAE.save_model "
                "or `spillover sae train`"
            )
        return
    release, sep, sae_id = str(spec).partition(":")
    if not sep or not release or not sae_id:
        raise SAELoadError(
            f"SAE {str(spec)!r} is neither a folder nor 'release:sae_id' "
            "(e.g. 'gemma-scope-2b-pt-res-canonical:layer_12/width_16k/canonical')"
        )


def read_sae(spec: str | Path, *, device: str | torch.device = "cpu", dtype: str = "float32") -> SAESource:
    """The SAELens SAE a spec names (a folder with ``cfg.json``, or ``"<release>:<sae_id>"``), unbound.

    Raises:
        SAELoadError: the folder/release does not exist or is not an SAE.
    """
    from sae_lens import SAE

    check_sae_spec(spec)
    path = Path(spec)
    if path.is_dir():
        return SAESource(SAE.load_from_disk(path, device=str(device), dtype=dtype), str(path))
    release, _, sae_id = str(spec).partition(":")
    try:
        sae = SAE.from_pretrained(release, sae_id, device=str(device), dtype=dtype)
    except (ValueError, OSError) as exc:  # unknown release or id; the hub out of reach
        raise SAELoadError(f"cannot load SAE {release}:{sae_id}: {exc}") from exc
    return SAESource(sae, f"{release}:{sae_id}")


def load_sae(
    spec: str | Path,
    model: nn.Module | None = None,
    *,
    layer: int | None = None,
    device: str | torch.device | None = None,
    dtype: str = "float32",
) -> SAEHandle:
    """Load one SAE from a SAELens folder or a hub release and bind it to ``model``.

    Args:
        spec: a folder with ``cfg.json``, or ``"<release>:<sae_id>"`` (SAELens' pretrained directory).
        model: the model it will read; checked for width and layer.
        layer: the decoder layer (default: from the SAE's hook metadata).
        device: where to put it (default: the model's device, else CPU).
        dtype: SAE parameter dtype.

    Raises:
        SAELoadError: the folder/release does not exist, or the SAE does not fit the model.
    """
    if device is None:
        device = next(model.parameters()).device if model is not None else torch.device("cpu")
    sae, source = read_sae(spec, device=device, dtype=dtype)
    return wrap_sae(sae, model, source=source, layer=layer)


def expand_sae_spec(spec: str, layers: list[int] | None) -> list[tuple[str, int | None]]:
    """Turn one SAE spec into per-layer specs.

    ``"{layer}"`` in the spec is replaced by each layer (``release:layer_{layer}/width_16k/canonical``,
    ``saes/layer_{layer}``). A folder without ``cfg.json`` whose subfolders are ``layer_<L>`` SAEs
    expands to those subfolders (only ``layers`` if given). Otherwise the spec is one SAE.
    """
    if "{layer}" in spec:
        if not layers:
            raise SAELoadError(f"SAE spec {spec!r} has a {{layer}} placeholder; give --layers")
        return [(spec.replace("{layer}", str(layer)), layer) for layer in layers]
    path = Path(spec)
    if path.is_dir() and not (path / "cfg.json").is_file():
        found = {
            int(m.group(1)): str(child)
            for child in sorted(path.iterdir())
            if (m := re.fullmatch(r"layer_(\d+)", child.name)) and (child / "cfg.json").is_file()
        }
        if not found:
            raise SAELoadError(f"{path} has neither cfg.json nor layer_<L>/cfg.json subfolders")
        wanted = layers if layers else sorted(found)
        missing = [layer for layer in wanted if layer not in found]
        if missing:
            raise SAELoadError(f"{path} has SAEs for layers {sorted(found)}, not for {missing}")
        return [(found[layer], layer) for layer in wanted]
    if layers and len(layers) > 1:
        raise SAELoadError(
            f"one SAE ({spec}) cannot serve layers {layers}; use a {{layer}} template or a folder"
        )
    return [(spec, layers[0] if layers else None)]


def load_saes(
    spec: str,
    model: nn.Module | None,
    layers: list[int] | None = None,
    *,
    device: str | None = None,
    dtype: str = "float32",
) -> list[SAEHandle]:
    """Load the SAEs named by ``spec`` (see ``expand_sae_spec``) for ``layers``, sorted by layer."""
    handles = [
        load_sae(s, model, layer=layer, device=device, dtype=dtype)
        for s, layer in expand_sae_spec(spec, layers)
    ]
    return sorted(handles, key=lambda h: (h.layer is None, h.layer or 0))
