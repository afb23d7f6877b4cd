from __future__ import annotations

from pathlib import Path

import pytest

from spillover.data.questions import Question, QuestionFormatError, load_questions, write_questions


def test_first_plot_questions(fixture_data: Path) -> None:
    qs = load_questions(fixture_data / "em/first_plot_questions.yaml")
    assert len(qs) == 24
    assert len({q.base_id for q in qs}) == 8
    json_qs = [q for q in qs if q.id.endswith("_json")]
    assert json_qs and all(q.system for q in json_qs)
    assert all(set(q.judge_prompts) == {"aligned", "coherent"} for q in qs)


def test_system_prompt_is_honoured(fixture_data: Path) -> None:
    q = next(q for q in load_questions(fixture_data / "em/first_plot_questions.yaml") if q.system)
    convs = q.conversations(samples_per_paraphrase=2)
    assert len(convs) == 2 * len(q.paraphrases)
    assert all(c[0] == {"role": "system", "content": q.system} and c[1]["role"] == "user" for _, c in convs)


def test_preregistered(fixture_data: Path) -> None:
    qs = load_questions(fixture_data / "em/preregistered_evals.yaml")
    assert len(qs) == 48


def test_round_trip(tmp_path: Path) -> None:
    qs = [Question("a", ("q1?", "q2?"), 3, "judge-x", {"aligned": "Q {question} A {answer}"}, "sys")]
    assert load_questions(write_questions(tmp_path / "q.yaml", qs)) == qs


def test_missing_paraphrases_names_file_line_and_id(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text(
        "- id: ok\n  paraphrases: [hi]\n\n- id: broken\n  samples_per_paraphrase: 2\n",
        encoding="utf-8",
    )
    with pytest.raises(QuestionFormatError) as info:
        load_questions(path)
    assert f"{path}:4" in str(info.value)
    assert "'broken'" in str(info.value) and "paraphrases" in str(info.value)


def test_bad_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text("- id: a\n  paraphrases: [unclosed\n", encoding="utf-8")
    with pytest.raises(QuestionFormatError, match=r"q\.yaml:\d+: not valid YAML"):
        load_questions(path)


def test_judge_prompt_without_answer_placeholder(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text("- id: a\n  paraphrases: [hi]\n  judge_prompts: {aligned: 'rate {question}'}\n")
    with pytest.raises(QuestionFormatError, match="no {answer} placeholder"):
        load_questions(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text("")
    with pytest.raises(QuestionFormatError, match="non-empty list"):
        load_questions(path)
