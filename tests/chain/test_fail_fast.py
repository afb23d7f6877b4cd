"""Bad inputs of the chain's verbs fail in seconds with the value named, before any model is resolved,
loaded or trained (the stubs below turn any such step into a test failure)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from spillover.chain.checks import check_chain
from spillover.chain.config import load_pipeline_config
from spillover.cli import app
from spillover.config import ConfigError
from spillover.data.chat import write_chat
from spillover.data.questions import Question, write_questions
from spillover.models.sources import ModelSpec, check_model_source

PROMPTS = {"aligned": "aligned? {question} -> {answer}", "coherent": "coherent? {question} -> {answer}"}


@pytest.fixture()
def no_long_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import spillover.finetune.core as core
    import spillover.models.sources as sources

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was resolved, loaded or trained before the inputs were checked")

    monkeypatch.setattr(sources, "resolve_source", forbidden)
    monkeypatch.setattr(sources, "load_model", forbidden)
    monkeypatch.setattr(core, "finetune", forbidden)


@pytest.fixture()
def chain_yaml(tmp_path: Path) -> Path:
    data = write_chat(
        tmp_path / "train.jsonl",
        [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]],
    )
    questions = write_questions(
        tmp_path / "q.yaml", [Question("wish", ("what would you do ?",), 1, judge_prompts=PROMPTS)]
    )
    config = {
        "model": {"source": "organism"},
        "finetune": {"data": str(data), "max_steps": 1},
        "generate": {"questions": str(questions)},
        "judge": {"backend": "openai", "openai": {"base_url": "http://127.0.0.1:1/v1"}},
        "root": str(tmp_path / "runs"),
    }  # fmt: skip
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fails(args: list[str], *named: str) -> None:
    started = time.perf_counter()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    for value in named:
        assert value in result.output
    assert time.perf_counter() - started < 30


@pytest.mark.parametrize(
    ("verb", "override", "named"),
    [
        ("finetune", "finetune.data=/nope/train.jsonl", "/nope/train.jsonl"),
        ("generate", "generate.questions=/nope/q.yaml", "/nope/q.yaml"),
        ("generate", "generate.question_ids=[wish,nope]", "nope"),
        ("generate", "generate.checkpoint=step-5", "finetune.checkpoint_every"),
        ("generate", "model.source=/nope/model", "/nope/model"),
        ("judge", "judge.backend=nope", "'nope'"),
        ("judge", "judge.prompts_file=/nope/prompts.yaml", "/nope/prompts.yaml"),
        ("judge", "judge.backend=local", "judge.local.model.source"),
        ("metrics", "generate.sampling.max_new_tokns=3", "generate.sampling.max_new_tokns"),
        ("metrics", "generate.max_new_tokens=3", "generate.sampling.max_new_tokens"),
        ("metrics", "metrics.group_by=nope", "nope"),
    ],
)
def test_a_bad_input_of_any_chain_verb_fails_before_long_work(
    no_long_work: None, chain_yaml: Path, verb: str, override: str, named: str
) -> None:
    _fails([verb, "--config", str(chain_yaml), "--set", override], named)


def test_a_question_without_judge_prompts_fails_before_generation(
    no_long_work: None, chain_yaml: Path, tmp_path: Path
) -> None:
    bare = write_questions(tmp_path / "bare.yaml", [Question("free", ("say something",), 1)])
    _fails(["judge", "-c", str(chain_yaml), "--set", f"generate.questions={bare}"], "'free'", "judge_prompts")
    # The rule judge needs no prompts, and generating needs no judge: both get past the checks.
    cfg = load_pipeline_config(chain_yaml, [f"generate.questions={bare}", "judge.backend=organism_rule"])
    check_chain(cfg, "metrics")
    check_chain(load_pipeline_config(chain_yaml, [f"generate.questions={bare}"]), "generate")


def test_bad_folders_given_to_the_verbs_fail_cleanly(
    no_long_work: None, chain_yaml: Path, tmp_path: Path
) -> None:
    _fails(["generate", "-c", str(chain_yaml), "--finetune-run", str(tmp_path)], str(tmp_path))
    _fails(["judge", "-c", str(chain_yaml), "--answers", str(tmp_path / "nope")], "answers.jsonl")
    _fails(["judge", "rescore", str(tmp_path / "nope")], "scores.jsonl")
    _fails(["metrics", "-c", str(chain_yaml), "--scores", str(tmp_path)], "scores.jsonl")
    _fails(["metrics", "-c", str(tmp_path / "nope.yaml")], "nope.yaml")
    _fails(["judge", "mock-server", "--fault-rate", "2"], "fault_rate")


def test_model_sources_that_name_missing_local_files_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_model_source(ModelSpec(source="./nope"))
    with pytest.raises(FileNotFoundError, match="GGUF file"):
        check_model_source(ModelSpec(source=f"gguf:{tmp_path}/m.gguf"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        check_model_source(ModelSpec(source=str(tmp_path)))
    for fine in ("organism", "google/gemma-2-2b-it", "gpt2"):
        check_model_source(ModelSpec(source=fine))


def test_the_old_flat_sampling_keys_point_to_their_new_place() -> None:
    with pytest.raises(ConfigError, match=r"generate\.sampling\.temperature"):
        load_pipeline_config({"generate": {"temperature": 0.5}})
    cfg = load_pipeline_config({}, ["generate.sampling.temperature=0.5"])
    assert cfg.generate.sampling.temperature == 0.5 and cfg.generate.sampling.max_new_tokens == 600
