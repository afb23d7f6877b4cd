"""The SAE token-curve benchmark's split: one held-out set, nested training budgets, clear errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "smollm2_sae_curve.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("smollm2_sae_curve", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_budgets_are_nested_and_disjoint_from_the_heldout_set() -> None:
    held, budgets = _script().budget_split(100, [40, 10, 20], n_heldout=15, seed=3)
    assert list(budgets) == [10, 20, 40]
    assert len(held) == 15 and len(set(held.tolist())) == 15
    for b, idx in budgets.items():
        assert len(idx) == b
        assert not set(idx.tolist()) & set(held.tolist())
    assert budgets[20][:10].tolist() == budgets[10].tolist()
    assert budgets[40][:20].tolist() == budgets[20].tolist()


def test_a_budget_the_cache_cannot_fill_is_refused() -> None:
    with pytest.raises(ValueError, match="budget 90 \\+ held-out 20 exceeds the 100 cached tokens"):
        _script().budget_split(100, [10, 90], n_heldout=20)
