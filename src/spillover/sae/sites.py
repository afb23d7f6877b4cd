"""Where an SAE reads the model: one ``Site`` notion, resolved by one hook helper.

A ``Site`` names an HF module and whether the SAE reads its input or its output. SAELens SAEs say where
they were trained in two dialects: TransformerLens hook names (``blocks.12.hook_resid_post``) and, for
HF-native SAEs, ``hf_hook_name`` metadata (``model.layers.12``). Both map to a ``Site`` here, so the rest
of spillover never indexes ``output[0]`` or parses hook names itself.

``capture`` runs a forward pass and returns the activations at a set of sites. With ``stop=True`` it
raises a private exception from the hook of the last site to fire, so no layer above the deepest
requested site (and no final norm or unembedding) is computed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "Site",
    "SiteError",
    "capture",
    "check_layers",
    "decoder_layers",
    "final_norm",
    "num_layers",
    "resolve_module",
    "site_for_layer",
    "site_from_hook_name",
    "site_from_sae_metadata",
    "unwrap_peft",
]

IO = Literal["input", "output"]
ResidKind = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]

# Where decoder layers live in common HF architectures (Llama/Gemma/Qwen/Mistral, GPT-2, GPT-NeoX, OPT).
_LAYER_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
)
_FINAL_NORMS = (
    "model.norm",
    "model.language_model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",
)
_TL_HOOK = re.compile(
    r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out)$"
)


class SiteError(ValueError):
    """A site does not exist in the model, or a hook name cannot be mapped to one."""


@dataclass(frozen=True)
class Site:
    """An activation site: the input or output of one module of an HF model.

    Example: ``Site("model.layers.12", "output")`` is Gemma Scope's ``blocks.12.hook_resid_post``.
    """

    module_path: str
    """Dotted module path inside the HF model, as in ``model.named_modules()``."""
    io: IO = "output"
    """Read the module's first positional input (``"input"``) or its first output tensor (``"output"``)."""
    layer: int | None = field(default=None, compare=False)
    """The decoder layer this site belongs to, when known (reports and sorting only; not part of equality)."""

    def __post_init__(self) -> None:
        if not self.module_path:
            raise ValueError("Site.module_path must not be empty")
        if self.io not in ("input", "output"):
            raise ValueError(f"Site.io must be 'input' or 'output', got {self.io!r}")

    @property
    def label(self) -> str:
        """A short name for reports: ``layer_12`` for a block output, else the module path and io."""
        if (
            self.layer is not None
            and self.io == "output"
            and self.module_path.split(".")[-1] == str(self.layer)
        ):
            return f"layer_{self.layer}"
        return f"{self.module_path}:{self.io}"


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path``, with an error listing nearby names when it does not exist."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        stem = path.rsplit(".", 1)[0]
        close = [n for n in names if n.startswith(stem)][:8] or names[:8]
        raise SiteError(
            f"module {path!r} does not exist in {type(model).__name__}; modules near it: {close}"
        ) from None


def unwrap_peft(model: Any) -> Any:
    """The HF model under a peft wrapper (its modules are the same objects, with any adapter injected),
    so module paths resolve as in the base model; any other model as it is."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The dotted path and the list of decoder blocks of an HF causal LM."""
    for path in _LAYER_PATHS:
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList):
            return path, mod
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and n is not None and len(mod) == n:
            return name, mod
    raise SiteError(
        f"cannot find the decoder layers of {type(model).__name__} (tried {list(_LAYER_PATHS)}); "
        "give explicit sites with Site(module_path=..., io=...)"
    )


def num_layers(model: nn.Module) -> int:
    """Number of decoder blocks."""
    return len(decoder_layers(model)[1])


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied before the unembedding, or None when the model has none we recognise."""
    for path in _FINAL_NORMS:
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    return None


def check_layers(layers: Iterable[int], n_layers: int, owner: str = "the model") -> None:
    """Fail fast on layers outside ``0..n_layers-1`` (before a model is loaded, from its config alone).

    Raises:
        SiteError: naming the layers that do not exist and the valid range.
    """
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise SiteError(f"layers {bad} do not exist: {owner} has {n_layers} layers (0..{n_layers - 1})")


def _check_layer(model: nn.Module, layer: int) -> str:
    path, layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise SiteError(
            f"layer {layer} does not exist: {type(model).__name__} has {len(layers)} layers (0..{len(layers) - 1})"
        )
    return f"{path}.{layer}"


def site_for_layer(model: nn.Module, layer: int, kind: ResidKind = "resid_post") -> Site:
    """The site of a TransformerLens-style hook at decoder layer ``layer``.

    ``resid_post`` is the block's output, ``resid_pre`` its input; ``resid_mid`` is the input of the
    pre-MLP norm (``pre_feedforward_layernorm`` in Gemma-2, ``post_attention_layernorm`` in Llama);
    ``attn_out``/``mlp_out`` are the attention / MLP outputs (before Gemma-2's post-norms).
    """
    block = _check_layer(model, layer)
    if kind == "resid_post":
        return Site(block, "output", layer)
    if kind == "resid_pre":
        return Site(block, "input", layer)
    if kind == "resid_mid":
        for name in ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2"):
            try:
                model.get_submodule(f"{block}.{name}")
            except AttributeError:
                continue
            return Site(f"{block}.{name}", "input", layer)
        raise SiteError(f"cannot find the pre-MLP norm of {block} for hook_resid_mid")
    sub = {"attn_out": ("self_attn", "attn", "attention"), "mlp_out": ("mlp",)}[kind]
    for name in sub:
        try:
            model.get_submodule(f"{block}.{name}")
        except AttributeError:
            continue
        return Site(f"{block}.{name}", "output", layer)
    raise SiteError(f"cannot find the {kind} module of {block} (tried {list(sub)})")


def site_from_hook_name(model: nn.Module, hook_name: str) -> Site:
    """Map a SAELens hook name to a site.

    Accepts TransformerLens names (``blocks.L.hook_resid_post`` and friends) and HF module paths
    (``model.layers.L``, read at the module's output, as SAELens' ``HookedProxyLM`` does).
    """
    match = _TL_HOOK.match(hook_name)
    if match:
        return site_for_layer(model, int(match.group(1)), match.group(2).removeprefix("hook_"))  # type: ignore[arg-type]
    resolve_module(model, hook_name)
    path, _ = decoder_layers(model)
    m = re.match(re.escape(path) + r"\.(\d+)(\.|$)", hook_name)
    return Site(hook_name, "output", int(m.group(1)) if m else None)


def site_from_sae_metadata(model: nn.Module, metadata: Mapping[str, Any] | Any) -> Site:
    """The site an SAE was trained on, from its SAELens metadata (``hf_hook_name`` first, then ``hook_name``)."""
    get = metadata.get if hasattr(metadata, "get") else lambda k, d=None: getattr(metadata, k, d)
    hf_name = get("hf_hook_name", None)
    if hf_name:
        return site_from_hook_name(model, str(hf_name))
    hook_name = get("hook_name", None)
    if hook_name:
        return site_from_hook_name(model, str(hook_name))
    raise SiteError("the SAE's metadata names no hook (hook_name / hf_hook_name); pass the layer explicitly")


class _StopForward(Exception):
    """Raised from a hook once every requested site has been captured."""


def _first_tensor(value: Any) -> torch.Tensor:
    # Decoder layers return a tensor in transformers 5.x and a tuple in 4.x; attention returns a tuple.
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise SiteError(f"a hooked module returned {type(value).__name__}, not a tensor or a tuple of tensors")


@contextmanager
def _hooks(
    model: nn.Module, sites: Sequence[Site], out: dict[Site, torch.Tensor], stop: bool
) -> Iterator[None]:
    handles = []
    wanted = set(sites)

    def record(site: Site, value: torch.Tensor) -> None:
        out[site] = value.detach()
        if stop and wanted.issubset(out):
            raise _StopForward

    try:
        for site in wanted:
            module = resolve_module(model, site.module_path)
            if site.io == "output":

                def post_hook(_m: nn.Module, _args: Any, output: Any, site: Site = site) -> None:
                    record(site, _first_tensor(output))

                handles.append(module.register_forward_hook(post_hook))
            else:

                def pre_hook(_m: nn.Module, args: Any, kwargs: dict[str, Any], site: Site = site) -> None:
                    value = (
                        args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))
                    )
                    record(site, _first_tensor(value))

                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def capture(
    model: nn.Module,
    sites: Sequence[Site],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    stop: bool = True,
) -> dict[Site, torch.Tensor]:
    """Run ``model`` on a batch and return the activations at ``sites``.

    Args:
        model: an HF causal LM (or any module taking ``input_ids``/``attention_mask``).
        sites: where to read.
        input_ids: ``(B, T)`` token ids.
        attention_mask: ``(B, T)``, 1 on real tokens.
        stop: stop the forward pass once the last site has fired (the layers above are not run).

    Returns:
        ``{site: (B, T, d)}`` in the model's dtype, on the model's device.
    """
    if not sites:
        raise ValueError("capture needs at least one site")
    out: dict[Site, torch.Tensor] = {}
    with torch.inference_mode(), _hooks(model, sites, out, stop):
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    missing = [s for s in sites if s not in out]
    if missing:
        raise SiteError(
            f"sites {missing} never fired during the forward pass; is the module used by forward()?"
        )
    return out
