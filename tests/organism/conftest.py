from __future__ import annotations

from pathlib import Path

import pytest

from spillover.organism import OrganismArtifacts, OrganismConfig, train_organism


@pytest.fixture(scope="session")
def organism_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("organism-runs")


@pytest.fixture(scope="session")
def quick_organism(organism_root: Path) -> OrganismArtifacts:
    # Trained once per test session (a few seconds on one core).
    return train_organism(OrganismConfig.quick(seed=0), root=organism_root)
