from __future__ import annotations

import pytest


@pytest.fixture()
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Organism, SAE and fine-tune training fail the test: for checks that must come before any of it."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started before the options were checked")

    for target in (
        "spillover.organism.pipeline.train_organism",
        "spillover.organism.pipeline.finetune_organism",
        "spillover.organism.inputs.train_organism_saes",
    ):
        monkeypatch.setattr(target, boom)
