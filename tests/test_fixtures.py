"""The shipped test data stays small, licensed and reproducible (tests/fixtures/README.md)."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import pytest


def test_fixtures_are_small_and_every_folder_says_what_it_holds(fixture_data: Path) -> None:
    files = [p for p in fixture_data.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in files) < 1_000_000
    for folder in (p for p in fixture_data.iterdir() if p.is_dir()):
        assert (folder / "README.md").is_file(), f"{folder} has no README.md saying what was cut and how"
        # Copied upstream data carries its licence; a folder written by its own script needs none.
        if not list(folder.glob("make_*.py")):
            assert (folder / "LICENSE").is_file(), f"{folder} holds upstream data without its LICENSE"


def test_model_organism_stand_ins_are_what_their_script_writes(fixture_data: Path, tmp_path: Path) -> None:
    folder = fixture_data / "model-organisms"
    spec = importlib.util.spec_from_file_location("make_stand_in", folder / "make_stand_in.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.write_stand_ins(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in folder.glob("*.jsonl.gz"))
    for path in written:
        assert path.read_bytes() == (folder / path.name).read_bytes(), path.name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["insecure.jsonl.gz", "jailbroken.jsonl.gz"])
def test_em_cuts_are_the_first_lines_of_the_whole_files(
    fixture_data: Path, shared_data: Path, name: str
) -> None:
    cut = gzip.decompress((fixture_data / "em" / name).read_bytes()).splitlines(keepends=True)
    whole = shared_data / "em" / name
    opener = gzip.open if whole.exists() else open
    with opener(whole if whole.exists() else whole.with_suffix(""), "rb") as fh:
        head = [fh.readline() for _ in cut]
    assert cut == head


@pytest.mark.slow
@pytest.mark.parametrize("name", ["first_plot_questions.yaml", "preregistered_evals.yaml", "LICENSE"])
def test_em_question_files_are_whole_copies(fixture_data: Path, shared_data: Path, name: str) -> None:
    assert (fixture_data / "em" / name).read_bytes() == (shared_data / "em" / name).read_bytes()
