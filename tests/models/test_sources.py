from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spillover.models import ModelSpec, load_model, package_gguf, resolve_source


def test_local_folder_round_trip(tiny_model, tiny_tokenizer, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_model(ModelSpec(source=str(tmp_path / "m"), device="cpu"))
    ids = torch.tensor([[2, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, tiny_model(ids).logits)
    assert loaded.tokenizer.chat_template == tiny_tokenizer.chat_template


def test_auto_device_is_cuda_when_there_is_one_and_the_weights_are_the_saved_ones(
    tiny_model, tiny_tokenizer, tmp_path: Path
) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    saved = tiny_model.state_dict()
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value.cpu(), saved[name]), name


def test_missing_folder_and_non_model_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_source("./no/such/model")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_source(str(tmp_path))


def test_hub_ids_pass_through() -> None:
    assert resolve_source("google/gemma-2-2b-it") == "google/gemma-2-2b-it"


def test_missing_package_names_the_install_command() -> None:
    with pytest.raises(FileNotFoundError, match="not installed"):
        package_gguf("no_such_package_xyz")
