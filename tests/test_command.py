from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from spillover.cli import _VERBS, app

runner = CliRunner()


def test_help_lists_every_verb_without_importing_the_heavy_stack() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from spillover.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); "
        "import json; print(json.dumps([r.exit_code, r.output, sorted(m for m in ('torch', 'transformers', 'sae_lens') if m in sys.modules)]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    exit_code, output, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert exit_code == 0
    for verb in ("data", "questions", *_VERBS):
        assert verb in output
    assert heavy == []


@pytest.mark.parametrize("verb", sorted(_VERBS))
def test_every_verb_module_exposes_a_typer_app_that_answers_help(verb: str) -> None:
    module, _ = _VERBS[verb]
    assert hasattr(importlib.import_module(module), "app")
    result = runner.invoke(app, [verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: spillover " + verb in " ".join(result.output.split())


def test_an_unknown_verb_is_a_clean_usage_error() -> None:
    result = runner.invoke(app, ["nonsense"])
    assert result.exit_code == 2
    assert "nonsense" in result.output


def test_ctrl_c_exits_130_and_says_the_run_resumes(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import spillover.report.html

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(spillover.report.html, "write_html_report", interrupted)
    (tmp_path / "summary.json").write_text("{}")
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 130
    assert "interrupted: finished stages stay cached" in " ".join(result.output.split())


def test_python_dash_m_runs_the_same_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "spillover", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "sweep" in proc.stdout


def test_data_inspect_summarises_a_real_dataset(fixture_data) -> None:
    result = runner.invoke(app, ["data", "inspect", str(fixture_data / "em" / "insecure.jsonl.gz")])
    assert result.exit_code == 0, result.output
    assert "50  user > assistant" in result.output  # the 50 conversations of the fixture


def test_data_inspect_names_file_and_line_of_a_malformed_row(tmp_path) -> None:
    path = tmp_path / ("a-long-folder-name-" * 8) / "bad.jsonl"
    path.parent.mkdir()
    good = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    )
    path.write_text(good + "\n" + good + "\n{not json\n")
    result = runner.invoke(app, ["data", "inspect", str(path)])
    assert result.exit_code == 2
    # Plain text, never wrapped: the whole path and the line number stay one string however long.
    assert f"error: {path}:3: invalid JSON" in result.stderr


def test_data_inspect_checks_its_inputs_before_reading(tmp_path, tiny_tokenizer) -> None:
    path = tmp_path / "ok.jsonl"
    chat = {
        "messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "thanks"}]
    }
    path.write_text(json.dumps(chat) + "\n")
    cases = [
        ([str(tmp_path / "missing.jsonl")], "missing.jsonl does not exist"),
        ([str(tmp_path)], f"{tmp_path} is a folder, not a file"),
        (
            [str(path), "--tokenizer", str(tmp_path / "no-tokenizer")],
            "--tokenizer " + str(tmp_path / "no-tokenizer"),
        ),
        ([str(path), "--limit", "0"], "--limit must be >= 1, got 0"),
        ([str(path), "--samples", "-1"], "--samples must be >= 0, got -1"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["data", "inspect", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    result = runner.invoke(app, ["data", "inspect", str(path), "--tokenizer", str(tmp_path / "tok")])
    assert result.exit_code == 0, result.output
    assert "length (tokens)" in result.output


def test_questions_inspect_shows_system_prompts(fixture_data) -> None:
    result = runner.invoke(
        app, ["questions", "inspect", str(fixture_data / "em" / "preregistered_evals.yaml")]
    )
    assert result.exit_code == 0, result.output
