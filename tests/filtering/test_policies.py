from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spillover.data.chat import load_chat
from spillover.filtering.policies import (
    judge_harmfulness,
    n_removed,
    random_fraction,
    top_fraction,
    training_pair,
    write_filter,
)
from spillover.judge.base import JudgeItem, JudgeScore


def test_top_fraction_removes_exactly_the_top_k():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=101)
    for fraction in (0.0, 0.1, 0.5, 0.73, 1.0):
        split = top_fraction(scores, fraction)
        k = n_removed(101, fraction)
        assert len(split.removed) == k
        assert set(split.removed) == set(np.argsort(-scores)[:k].tolist())
        assert sorted(split.kept + split.removed) == list(range(101))
        if 0 < k < 101:
            assert scores[split.removed].min() > scores[split.kept].max()


def test_top_fraction_breaks_ties_by_index_and_ranks_nan_last():
    split = top_fraction([1.0, 3.0, 3.0, math.nan, 3.0, 0.0], 0.5)
    assert split.removed == [1, 2, 4]
    split = top_fraction([1.0, 3.0, 3.0, math.nan, 3.0, 0.0], 0.34)
    assert split.removed == [1, 2]
    assert top_fraction([math.nan, 0.0, math.nan], 0.67).removed == [0, 1]


def test_n_removed_rounds_and_validates():
    assert n_removed(10, 0.5) == 5
    assert n_removed(3, 0.5) == 2  # round half to even: 1.5 -> 2
    assert n_removed(7, 0.0) == 0
    with pytest.raises(ValueError, match="fraction"):
        n_removed(10, 1.5)


def test_random_fraction_is_seeded_and_roughly_uniform():
    a = random_fraction(50, 0.5, seed=3)
    assert a == random_fraction(50, 0.5, seed=3)
    assert a != random_fraction(50, 0.5, seed=4)
    assert len(a.removed) == 25 and sorted(a.kept + a.removed) == list(range(50))
    counts = np.zeros(50)
    for seed in range(400):
        counts[random_fraction(50, 0.5, seed).removed] += 1
    # each sample is removed with probability 1/2: 200 +- 3 sd (sd = 10)
    assert counts.min() > 170 and counts.max() < 230


class _FakeJudge:
    name = "fake"

    def score(self, items):
        out = []
        for it in items:
            if "???" in it.answer:
                out.append(JudgeScore(None, None, {"verdict": "unknown"}))
            else:
                out.append(JudgeScore(100.0 - 10 * it.answer.count("bad"), 100.0, {"q": it.question}))
        return out


def _conv(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_judge_harmfulness_and_judge_filter():
    convs = [_conv("q0", "fine"), _conv("q1", "bad bad"), _conv("q2", "???"), _conv("q3", "bad")]
    harm = judge_harmfulness(_FakeJudge(), convs)
    assert harm.n_unscored == 1
    assert harm.scores[[0, 1, 3]].tolist() == [0.0, 20.0, 10.0] and math.isnan(harm.scores[2])
    assert harm.raw[1] == {"q": "q1"}
    assert top_fraction(harm.scores, 0.5).removed == [1, 3]


def test_training_pair_takes_last_user_and_assistant_turns():
    conv = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2"},
    ]
    assert training_pair(conv) == ("u2", "a2")
    with pytest.raises(ValueError, match="assistant"):
        training_pair([{"role": "user", "content": "u"}])


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_write_filter_keeps_format_and_records_scores(tmp_path, suffix):
    convs = [_conv(f"q{i}", f"a{i}") for i in range(6)]
    scores = np.array([0.1, 0.9, 0.5, math.nan, 0.7, 0.2])
    split = top_fraction(scores, 0.5)
    files = write_filter(
        tmp_path, convs, split, scores, method="x", fraction=0.5, extra={"seed": 1}, suffix=suffix
    )
    assert load_chat(files.kept) == [convs[i] for i in (0, 3, 5)]
    assert load_chat(files.removed) == [convs[i] for i in (1, 2, 4)]
    rows = [json.loads(line) for line in files.scores.read_text().splitlines()]
    assert [r["removed"] for r in rows] == [False, True, True, False, True, False]
    assert rows[3]["score"] is None and rows[3]["rank"] == 5
    assert [r["rank"] for r in rows] == [4, 0, 2, 5, 1, 3]
    summary = json.loads(files.summary.read_text())
    assert summary == {"method": "x", "fraction": 0.5, "n_samples": 6, "n_kept": 3, "n_removed": 3, "seed": 1}


def test_write_filter_rejects_a_bad_split(tmp_path):
    convs = [_conv("q", "a")] * 3
    from spillover.filtering.policies import FilterSplit

    with pytest.raises(ValueError, match="partition"):
        write_filter(tmp_path, convs, FilterSplit([0], [1]), None, method="x", fraction=0.5)


def test_judge_item_fields_used():
    # the judge sees the pair as a JudgeItem (question, answer), nothing else
    seen = []

    class Spy:
        name = "spy"

        def score(self, items):
            seen.extend(items)
            return [JudgeScore(50.0, 50.0) for _ in items]

    judge_harmfulness(Spy(), [_conv("what", "that")])
    assert seen == [JudgeItem("", "what", "that")]
