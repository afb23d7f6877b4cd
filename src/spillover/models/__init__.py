"""Model sources: hub ids, local folders, GGUF files and GGUF-in-package (SmolLM2 offline)."""

from spillover.models.sources import (
    LoadedModel,
    ModelSpec,
    convert_gguf,
    load_model,
    package_gguf,
    resolve_source,
)

__all__ = ["LoadedModel", "ModelSpec", "convert_gguf", "load_model", "package_gguf", "resolve_source"]
