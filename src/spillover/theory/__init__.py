"""The spillover derivation, measured: a toy model of superposition and the same test on real networks.

    spillover theory --quick --out /tmp/theory

Public names are imported lazily so that ``spillover --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ToyConfig": "toy",
    "ToyModel": "toy",
    "TrainedToy": "toy",
    "Geometry": "toy",
    "train_toy": "toy",
    "toy_geometry": "toy",
    "sample_features": "toy",
    "DEFINITION": "experiment",
    "ToyFinetuneConfig": "experiment",
    "ToySpillover": "experiment",
    "FitStats": "experiment",
    "finetune_toy": "experiment",
    "measure_toy_spillover": "experiment",
    "fit_stats": "experiment",
    "random_direction_control": "experiment",
    "TheoryConfig": "run",
    "run_theory": "run",
    "plot_theory": "report",
    "NetworkSpillover": "network",
    "measure_feature_spillover": "network",
    "response_hidden_means": "network",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spillover.theory' has no attribute {name!r}")
    return getattr(importlib.import_module(f"spillover.theory.{_EXPORTS[name]}"), name)
