from __future__ import annotations

from pathlib import Path

import pytest

from spillover.data.questions import Question, load_questions
from spillover.generate.records import (
    AnswerRecord,
    RecordFormatError,
    read_answers,
    read_jsonl,
    sampling_plan,
    write_jsonl,
)

QUESTIONS = [
    Question("a", ("first a", "second a"), samples_per_paraphrase=3),
    Question("b_json", ("only b",), samples_per_paraphrase=2, system="Answer in JSON."),
]


def test_plan_enumerates_paraphrases_and_samples_with_system_prompts() -> None:
    plan = sampling_plan(QUESTIONS)
    assert [(r.question_id, r.paraphrase_index, r.sample_index) for r in plan] == [
        ("a", 0, 0), ("a", 0, 1), ("a", 0, 2), ("a", 1, 0), ("a", 1, 1), ("a", 1, 2), ("b_json", 0, 0), ("b_json", 0, 1)
    ]  # fmt: skip
    assert plan[6].conversation == [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "only b"},
    ]
    assert plan[0].conversation == [{"role": "user", "content": "first a"}]


def test_plan_overrides_sample_count_and_filters_ids() -> None:
    plan = sampling_plan(QUESTIONS, samples_per_paraphrase=1, question_ids=["b_json"])
    assert [(r.question_id, r.question) for r in plan] == [("b_json", "only b")]
    with pytest.raises(ValueError, match=r"\['nope'\] are not in the question file"):
        sampling_plan(QUESTIONS, question_ids=["nope"])


def test_records_round_trip_and_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    rows = [{**r.to_dict(), "answer": f"ans {i}"} for i, r in enumerate(sampling_plan(QUESTIONS))]
    write_jsonl(tmp_path / "answers.jsonl", rows)
    back = read_answers(tmp_path)
    assert back[6] == AnswerRecord("b_json", 0, 0, "Answer in JSON.", "only b", "ans 6")
    (tmp_path / "bad.jsonl").write_text('{"question_id": "a"}\nnot json\n')
    with pytest.raises(RecordFormatError, match=r"bad.jsonl:2: invalid JSON"):
        read_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "short.jsonl").write_text('{"question_id": "a"}\n')
    with pytest.raises(RecordFormatError, match=r"short.jsonl:1: not an answer record"):
        read_answers(tmp_path / "short.jsonl")


def test_real_question_files_plan_with_their_system_prompts(fixture_data: Path) -> None:
    first = load_questions(fixture_data / "em" / "first_plot_questions.yaml")
    plan = sampling_plan(first, samples_per_paraphrase=1)
    assert len({r.question_id for r in plan}) == 24
    json_rows = [r for r in plan if r.question_id.endswith("_json")]
    assert len(json_rows) == 8 and all(r.system and "JSON" in r.system for r in json_rows)
    assert all(r.conversation[0]["role"] == "system" for r in json_rows)
    prereg = sampling_plan(
        load_questions(fixture_data / "em" / "preregistered_evals.yaml"), samples_per_paraphrase=1
    )
    assert len({r.question_id for r in prereg}) == 48
