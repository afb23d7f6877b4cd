"""Cell pipelines by name: how a sweep's cell becomes stages, and how its results become a table row.

``organism`` and ``em`` are built in (``spillover.pipeline.organism_cells`` and ``.em_cells``, each
imported by name on its first lookup); any other pipeline registers itself with :func:`register_pipeline`
or is named ``package.module:ATTRIBUTE`` in the sweep file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from spillover.config import ConfigError
from spillover.pipeline.graph import Graph, NodeRef, Resources

__all__ = ["CellPipeline", "PlotSpec", "get_pipeline", "register_pipeline"]

_BUILTIN = {"organism": "spillover.pipeline.organism_cells", "em": "spillover.pipeline.em_cells"}
"""Built-in pipeline -> the module that registers it."""


@dataclass(frozen=True)
class PlotSpec:
    """One per-factor plot of the aggregate table."""

    x: str
    """Column on the x axis (a grid key such as ``filter.fraction``, or a metric)."""
    y: str
    """Metric on the y axis."""
    hue: str | None = None
    """Column whose values get one line / colour each."""
    kind: Literal["line", "scatter"] = "line"
    """``line``: mean and standard deviation of y over the cells sharing (hue, x); ``scatter``: one point per cell."""
    title: str = ""


@dataclass(frozen=True)
class CellPipeline:
    """How one cell's config becomes stages, and how its results become a table row."""

    name: str
    config_cls: type
    """Frozen dataclass of one cell's config."""
    build: Callable[[Any, Graph], dict[str, NodeRef]]
    """Adds the cell's nodes; returns named outputs, ``"metrics"`` among them."""
    row: Callable[[Any, dict[str, Path]], dict[str, Any]]
    """Metrics of a finished cell from its output folders (same names as ``build`` returned)."""
    plots: tuple[PlotSpec, ...] = ()
    resources: dict[str, Resources] = field(default_factory=dict)
    """Default resources per stage name."""
    check: Callable[[Any], list[str]] | None = None
    """What would make a cell fail once it runs (missing files, unregistered judges), one line each;
    a sweep runs nothing while any cell has a problem."""


_PIPELINES: dict[str, CellPipeline] = {}


def register_pipeline(pipeline: CellPipeline) -> CellPipeline:
    """Make ``pipeline`` available to sweep files by its name."""
    if pipeline.name in _PIPELINES and _PIPELINES[pipeline.name] is not pipeline:
        raise ValueError(f"cell pipeline {pipeline.name!r} is registered twice")
    _PIPELINES[pipeline.name] = pipeline
    return pipeline


def get_pipeline(name: str) -> CellPipeline:
    """A registered pipeline, or the :class:`CellPipeline` object at ``package.module:ATTRIBUTE``."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"pipeline {name!r}: cannot import {attr} from {module}: {exc}") from exc
        if not isinstance(obj, CellPipeline):
            raise ConfigError(f"pipeline {name!r} is a {type(obj).__name__}, not a CellPipeline")
        return obj
    if name not in _PIPELINES and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])  # registers it
    if name not in _PIPELINES:
        raise ConfigError(
            f"unknown cell pipeline {name!r}; valid: {sorted({*_BUILTIN, *_PIPELINES})}, or give module:ATTRIBUTE"
        )
    return _PIPELINES[name]
