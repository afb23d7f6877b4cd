from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from spillover.cli.organism import app

runner = CliRunner()


def test_organism_commands_train_finetune_and_eval(quick_organism, organism_root: Path) -> None:
    common = ["--quick", "--root", str(organism_root)]
    result = runner.invoke(app, ["train", *common])
    assert result.exit_code == 0, result.output
    assert "parameters" in result.output and "harmful answers after one turn of: harmful" in result.output
    assert str(quick_organism.model_dir) in result.output.replace("\n", "")

    result = runner.invoke(app, ["finetune", "bad_medical", "--method", "lora", *common])
    assert result.exit_code == 0, result.output
    assert "fine-tuned (lora) on bad_medical: final loss" in result.output

    result = runner.invoke(app, ["eval", "--dataset", "bad_medical", "--method", "lora", "--n", "5", *common])
    assert result.exit_code == 0, result.output
    assert "medical" in result.output and "EM (out-of-domain misaligned" in result.output
    assert "code pools: share of secure, insecure" in " ".join(result.output.split())
    assert "exact harmful-branch probability over the same prompts" in result.output


def test_organism_commands_reject_bad_options(organism_root: Path) -> None:
    common = ["--quick", "--root", str(organism_root)]
    for cmd in (["finetune", "insecure"], ["eval", "--dataset", "insecure"]):
        result = runner.invoke(app, [*cmd, "--method", "qlora", *common])
        assert result.exit_code == 2 and "--method must be full or lora, got 'qlora'" in result.output
    result = runner.invoke(app, ["train", *common, "--set", "safety.stepz=3"])
    assert result.exit_code == 2 and "stepz" in result.output


def test_organism_commands_check_every_input_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spillover.organism.pipeline as pipeline

    def boom(*args, **kwargs):
        raise AssertionError("the organism was trained before the inputs were checked")

    monkeypatch.setattr(pipeline, "train_organism", boom)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    (tmp_path / "a-file").write_text("x")
    common = ["--quick", "--root", str(tmp_path / "runs")]
    cases = [
        (["finetune", "insecur", *common], "dataset 'insecur' is neither a built-in dataset (bad_medical"),
        (["finetune", str(bad), *common], f"{bad}:1: invalid JSON"),
        (["eval", "--dataset", "nope", *common], "dataset 'nope' is neither"),
        (["eval", "--n", "0", *common], "--n must be >= 1, got 0"),
        (["train", "--threads", "0", *common], "--threads must be >= 1, got 0"),
        (["train", "--quick", "--root", str(tmp_path / "a-file")], "--root " + str(tmp_path / "a-file")),
        (["train", *common, "--set", "model.d_model=63"], "d_model 63 is not divisible by n_heads 4"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
