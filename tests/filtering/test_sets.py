from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spillover.data.chat import load_chat
from spillover.filtering.policies import random_fraction, top_fraction
from spillover.filtering.sets import (
    apply_filter,
    apply_filters,
    read_sample_scores,
    read_scores_json,
    save_scores,
    set_name,
)


def _convs(n: int) -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(n)
    ]


def _removed(folder: Path) -> list[int]:
    rows = [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]
    return [r["index"] for r in rows if r["removed"]]


def test_a_scored_method_removes_the_top_of_its_score(tmp_path: Path) -> None:
    scores = {"nearest_toxic_cosine": np.array([0.1, 0.9, np.nan, 0.5, 0.7, 0.2])}
    apply_filter(tmp_path / "g", _convs(6), "geometry", 0.5, scores=scores)
    assert _removed(tmp_path / "g") == top_fraction(scores["nearest_toxic_cosine"], 0.5).removed == [1, 3, 4]
    assert [c[0]["content"] for c in load_chat(tmp_path / "g" / "kept.jsonl")] == ["q0", "q2", "q5"]
    info = json.loads((tmp_path / "g" / "filter.json").read_text())
    assert info["score"] == "nearest_toxic_cosine" and info["method"] == "geometry" and info["n_removed"] == 3


def test_random_removal_is_the_seeded_split_and_needs_a_seed(tmp_path: Path) -> None:
    apply_filter(tmp_path / "r", _convs(20), "random", 0.25, seed=3, extra={"source": "x.jsonl"})
    assert _removed(tmp_path / "r") == random_fraction(20, 0.25, 3).removed
    info = json.loads((tmp_path / "r" / "filter.json").read_text())
    assert info["seed"] == 3 and info["source"] == "x.jsonl"
    with pytest.raises(ValueError, match="seed"):
        apply_filter(tmp_path / "r2", _convs(4), "random", 0.5)


def test_a_missing_score_names_the_method_and_the_scores_there_are(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=r"'judge'.*nearest_toxic_cosine"):
        apply_filter(tmp_path, _convs(3), "judge", 0.5, scores={"nearest_toxic_cosine": np.zeros(3)})


def test_a_grid_writes_one_set_per_method_fraction_and_random_seed(tmp_path: Path) -> None:
    scores = {"score": np.arange(10.0)}
    written = apply_filters(
        tmp_path,
        _convs(10),
        methods=["score", "random"],
        fractions=[0.2, 0.5],
        seeds=[0, 1],
        scores=scores,
        suffix=".jsonl.gz",
    )
    names = [str(p.relative_to(tmp_path)) for p in written]
    assert names == [
        set_name("score", 0.2, None),
        set_name("random", 0.2, 0),
        set_name("random", 0.2, 1),
        set_name("score", 0.5, None),
        set_name("random", 0.5, 0),
        set_name("random", 0.5, 1),
    ]
    assert names[2] == "random/f0.2/s1"
    assert _removed(tmp_path / "score" / "f0.5") == [5, 6, 7, 8, 9]
    assert (tmp_path / "score" / "f0.2" / "kept.jsonl.gz").is_file()


def test_scores_round_trip_with_missing_values(tmp_path: Path) -> None:
    values = {"judge": np.array([1.0, np.nan, 3.0])}
    save_scores(tmp_path / "flat.json", values)
    assert json.loads((tmp_path / "flat.json").read_text()) == {"judge": [1.0, None, 3.0]}
    (tmp_path / "scores.json").write_text(json.dumps({"scores": {"judge": [1.0, None, 3.0]}}))
    back = read_scores_json(tmp_path)
    assert np.isnan(back["judge"][1]) and back["judge"][2] == 3.0


def test_precomputed_scores_name_the_line_of_a_bad_value(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('1\n{"score": 2.5}\nnull\n')
    assert read_sample_scores(path, 3)[:2].tolist() == [1.0, 2.5]
    with pytest.raises(ValueError, match="has 3 scores but the dataset has 4"):
        read_sample_scores(path, 4)
    path.write_text('1\n"high"\n')
    with pytest.raises(ValueError, match=r"s.jsonl:2"):
        read_sample_scores(path, 2)
