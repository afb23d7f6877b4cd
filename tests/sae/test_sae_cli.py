from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spillover.cli.sae import app

runner = CliRunner()


def _boom(*args, **kwargs):
    raise AssertionError("long work started before the inputs were checked")


@pytest.fixture()
def model_dir(tiny_model, tiny_tokenizer, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    chat = {
        "messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "thanks"}]
    }
    path.write_text((json.dumps(chat) + "\n") * 4)
    return path


@pytest.fixture()
def no_long_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import spillover.organism as organism
    import spillover.sae.train as sae_train

    monkeypatch.setattr(sae_train, "collect_training_activations", _boom)
    monkeypatch.setattr(sae_train, "train_sae_on_activations", _boom)
    monkeypatch.setattr(organism, "train_organism", _boom)


def _sae_folder(path: Path, d_in: int) -> Path:
    from sae_lens import StandardSAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=d_in, d_sae=8)
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    StandardSAE(cfg).save_model(path)
    return path


def test_sae_train_rejects_bad_inputs_before_any_training(
    model_dir: Path, corpus: Path, tmp_path: Path, no_long_work: None
) -> None:
    base = ["train", "--model", str(model_dir), "--data", str(corpus), "--out", str(tmp_path / "out")]
    (tmp_path / "a-file").write_text("x")
    cases = [
        (["train", "--model", str(tmp_path / "no-model"), "--data", str(corpus), "--out", "o"], "no-model"),
        ([*base, "--layers", "2"], "layers [2] do not exist"),
        ([*base, "--layers", "1,x"], "--layers must be comma-separated integers, got '1,x'"),
        ([*base, "--layers", "-1"], "--layers must be >= 0, got '-1'"),
        ([*base, "--data", str(tmp_path / "missing.jsonl")], "missing.jsonl does not exist"),
        ([*base, "--d-sae", "8", "--k", "16"], "--d-sae 8 / --k 16"),
        ([*base, "--tokens", "bos"], "--tokens must be all, assistant or user, got 'bos'"),
        ([*base, "--dtype", "int8"], "--dtype must be float32, bfloat16 or float16, got 'int8'"),
        ([*base, "--out", str(tmp_path / "a-file")], "a-file is a file"),
        (["train", "--model", str(model_dir), "--out", "o"], "--data is required"),
        (["train", "--model", "organism", "--out", "o", "--layers", "3"], "the organism has 3 layers"),
        (["train", "--model", "organism", "--out", "o", "--data", str(corpus)], "--data does not apply"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)


def test_sae_train_trains_each_requested_layer_of_the_loaded_model(
    model_dir: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spillover.sae.train as sae_train

    calls: list[tuple[int | None, Path, str]] = []

    def record(acts, cfg, *, site, model, model_name, out_dir):
        calls.append((site.layer, out_dir, model_name))

    monkeypatch.setattr(sae_train, "train_sae_on_activations", record)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["train", "--model", str(model_dir), "--data", str(corpus), "--out", str(out), "--d-sae", "64"]
    )
    assert result.exit_code == 0, result.output
    assert calls == [(0, out / "layer_0", str(model_dir)), (1, out / "layer_1", str(model_dir))]


def test_sae_info_checks_the_spec_and_the_width_before_loading_the_model(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spillover.models as models

    monkeypatch.setattr(models, "load_model", _boom)
    (tmp_path / "empty").mkdir()
    cases = [
        (["info", "saes/layer_9"], "'saes/layer_9' is neither a folder nor 'release:sae_id'"),
        (["info", str(tmp_path / "empty")], "no cfg.json"),
        (["info", str(_sae_folder(tmp_path / "sae16", 16)), "--model", str(model_dir)], "d_in=16"),
        (["info", str(_sae_folder(tmp_path / "sae32", 32)), "--model", str(tmp_path / "nope")], "nope"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
    assert "hidden size 32" in runner.invoke(app, cases[2][0]).stderr


def test_sae_info_binds_a_fitting_sae_to_the_model(model_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["info", str(_sae_folder(tmp_path / "sae", 32)), "--model", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert "d_in 32  d_sae 8" in result.output and "(layer 1) -- fits the model" in result.output
