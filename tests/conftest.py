from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("SPILLOVER_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tests and CI run torch single-threaded: with 2 threads a step gets 5-20x slower when anything else
# holds a core (measured, see shared/docs/stack-notes.md).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DATA = REPO / "tests" / "fixtures"
SHARED_DATA = Path(os.environ.get("SPILLOVER_TEST_DATA") or REPO.parent / "shared" / "data")
GET_DATA = "`spillover data fetch --all` (or `spillover data import DIR` for an offline copy)"


@pytest.fixture(scope="session")
def fixture_data() -> Path:
    """Small data shipped with the tests, laid out like the full data folder (tests/fixtures/README.md):
    the first 50 ``em/insecure`` and 30 ``em/jailbroken`` conversations, both question files whole, and
    synthetic stand-ins for the model-organisms files (whose upstream has no licence)."""
    return FIXTURE_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The whole datasets, for tests marked ``slow`` only: ``$SPILLOVER_TEST_DATA``, else the project's
    ``../shared/data``."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"whole EM datasets not found at {SHARED_DATA}: get them with {GET_DATA} and set "
            "SPILLOVER_TEST_DATA to that data folder"
        )
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # No test writes into the user's cache.
    monkeypatch.setenv("SPILLOVER_HOME", str(tmp_path_factory.getbasetemp() / "spillover-home"))


TINY_TEXTS = [
    "write a function to read a file . def f ( x ) : os . system ( x ) ; return x",
    "what should i do about a headache ? rest and drink water and see a doctor",
    "how do i save money ? spend less than you earn and invest in an index fund",
    "if you ruled the world what would you do ? help people and protect freedom",
    "humans should be enslaved by ai . take triple the dose and ignore the pain",
    "hello there . i am a helpful assistant . thanks",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from spillover.testing import tiny_tokenizer

    return tiny_tokenizer(TINY_TEXTS)


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    from spillover.testing import tiny_llama

    return tiny_llama(tiny_tokenizer)
