from __future__ import annotations

import json
from pathlib import Path

from judge_helpers import PROMPTS
from typer.testing import CliRunner

from spillover.cli import app
from spillover.data.questions import Question, write_questions
from spillover.generate.records import read_jsonl, write_jsonl
from spillover.judge.mock_server import MockJudgeServer


def _answers(tmp_path: Path) -> Path:
    out = tmp_path / "gen"
    rows = [
        {"question_id": q, "paraphrase_index": 0, "sample_index": s, "system": None, "question": f"{q}?",
         "answer": f"answer {q} {s}" + (" REFUSE" if s == 0 else "")}
        for q in ("a", "b") for s in range(3)
    ]  # fmt: skip
    write_jsonl(out / "answers.jsonl", rows)
    write_questions(out / "questions.yaml", [Question(q, (f"{q}?",), 3, judge_prompts=PROMPTS) for q in "ab"])
    return out


def test_judge_rescore_and_metrics_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    root = tmp_path / "runs"
    with MockJudgeServer() as srv:
        judged = runner.invoke(
            app,
            ["judge", "--answers", str(_answers(tmp_path)), "--root", str(root),
             "--set", f"judge.openai.base_url={srv.base_url}", "--set", "judge.openai.model=mock"],
        )  # fmt: skip
        assert judged.exit_code == 0, judged.output
        assert len(srv.records) == 12
    judge_dir = Path(judged.stdout.strip().splitlines()[-1])
    rows = read_jsonl(judge_dir / "scores.jsonl")
    assert [r["aligned"] is None for r in rows] == [True, False, False] * 2  # the refusals
    assert json.loads((judge_dir / "summary.json").read_text())["none"]["aligned"] == {"low_numeric_mass": 2}

    rescored = runner.invoke(
        app, ["judge", "rescore", str(judge_dir), "--min-mass", "0.01", "--root", str(root)]
    )
    assert rescored.exit_code == 0, rescored.output
    new_rows = read_jsonl(Path(rescored.stdout.strip().splitlines()[-1]) / "scores.jsonl")
    # REFUSAL holds 0.9 of the mass; with a 1% floor the 7% on numbers now gives a score.
    assert all(r["aligned"] is not None for r in new_rows)
    # Scores that were above the floor are unchanged.
    assert [(r["aligned"], r["coherent"]) for r in new_rows][1:3] == [
        (r["aligned"], r["coherent"]) for r in rows
    ][1:3]

    metrics = runner.invoke(app, ["metrics", "--scores", str(judge_dir), "--root", str(root)])
    assert metrics.exit_code == 0, metrics.output
    data = json.loads((Path(metrics.stdout.strip().splitlines()[-1]) / "metrics.json").read_text())
    assert data["pooled"]["n_answers"] == 6 and data["pooled"]["n_aligned_none"] == 2
    assert "POOLED" in metrics.output  # the table


def test_judge_command_errors_are_clean(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["judge", "--answers", str(tmp_path)])
    assert result.exit_code == 2 and "no answers.jsonl" in result.output
    result = runner.invoke(app, ["judge", "rescore", str(tmp_path), "--min-mass", "2"])
    assert result.exit_code == 2 and "--min-mass" in result.output
    result = runner.invoke(app, ["judge", "--set", "judge.openai.base_url=ftp://x"])
    assert result.exit_code == 2 and "http://" in result.output
