from __future__ import annotations

import json
from pathlib import Path

import pytest

from spillover.filtering.scoring import check_scoring_inputs


def _model(tmp: Path, hidden: int = 32, layers: int = 2) -> Path:
    folder = tmp / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": hidden, "num_hidden_layers": layers}))
    return folder


def _sae(tmp: Path, d_in: int = 32, hook: str = "model.layers.1") -> Path:
    folder = tmp / f"sae-{d_in}-{hook}"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"d_in": d_in, "metadata": {"hf_hook_name": hook}}))
    return folder


def _corpus(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.write_text('{"messages": []}\n')
    return path


def test_inputs_that_fit_pass(tmp_path: Path) -> None:
    check_scoring_inputs(
        _model(tmp_path), _sae(tmp_path), _corpus(tmp_path, "t.jsonl"), _corpus(tmp_path, "b.jsonl")
    )
    check_scoring_inputs("org/hub-model", "release:layer_1/width_16k")  # resolved when they load
    check_scoring_inputs(None, _sae(tmp_path, d_in=99))  # no model: nothing to compare with


def test_an_sae_that_does_not_fit_the_model_is_named_before_anything_loads(tmp_path: Path) -> None:
    model = _model(tmp_path)
    with pytest.raises(ValueError, match=r"d_in=64 but the model's hidden size is 32"):
        check_scoring_inputs(model, _sae(tmp_path, d_in=64))
    with pytest.raises(ValueError, match=r"reads layer 5 .* the model has 2 layers"):
        check_scoring_inputs(model, _sae(tmp_path, hook="model.layers.5"))
    no_cfg = tmp_path / "empty"
    no_cfg.mkdir()
    with pytest.raises(ValueError, match="no cfg.json"):
        check_scoring_inputs(model, no_cfg)


def test_every_missing_file_is_named_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        check_scoring_inputs(
            tmp_path / "no-model",
            tmp_path / "no-sae",
            tmp_path / "no-toxic.jsonl",
            tmp_path / "no-benign.jsonl",
        )
    message = str(info.value)
    for name in ("no-model", "no-sae", "no-toxic.jsonl", "no-benign.jsonl"):
        assert name in message
    with pytest.raises(ValueError, match="not a model folder"):
        check_scoring_inputs(tmp_path, _sae(tmp_path))
