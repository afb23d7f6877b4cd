"""The shipped organisms: each loads, matches its manifest, and the code's default still produces its config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import spillover.organism.pipeline as pipeline
import spillover.organism.zoo as zoo
from spillover.config import to_dict
from spillover.organism import OrganismArtifacts, OrganismConfig, load_organism, train_organism
from spillover.organism.inputs import OrganismSAEConfig, train_organism_saes
from spillover.organism.pipeline import organism_run_id
from spillover.sae.train import SAETrainConfig

SHIPPED = zoo.shipped_organisms()
BUDGET_BYTES = 25 * 1024 * 1024


def test_spillover_ships_the_first_seeds_of_the_default_config_within_budget():
    assert len(SHIPPED) >= 3
    assert [e.seed for e in SHIPPED] == list(range(len(SHIPPED)))  # the first N seeds, not a selection
    size = sum(p.stat().st_size for p in zoo.ZOO_DIR.rglob("*") if p.is_file())
    assert size <= BUDGET_BYTES


@pytest.mark.parametrize("entry", SHIPPED, ids=lambda e: e.name)
def test_shipped_organism_matches_the_code_default_and_loads(entry):
    from spillover.sae.load import load_saes
    from spillover.studies.demo import DemoConfig

    default = OrganismConfig(seed=entry.seed)
    # A changed default (grammar, model, recipe) changes the run id, and this fails: retrain and re-ship.
    assert entry.manifest["config"] == to_dict(default)
    assert entry.run_id == organism_run_id(default)
    # The demo's SAE config is the one shipped, so the demo installs SAEs instead of training them.
    assert entry.manifest["sae_config_hash"] == zoo.sae_config_hash(DemoConfig().sae)
    model, tokenizer = load_organism(entry.model_dir)
    assert model.config.num_hidden_layers == default.model.n_layers
    assert model.config.hidden_size == default.model.d_model
    assert sum(p.numel() for p in model.parameters()) == entry.manifest["train_log"]["n_parameters"]
    saes = load_saes(str(entry.sae_dir), model)
    assert len(saes) == default.model.n_layers
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def _tiny_cfg(seed: int = 0) -> OrganismConfig:
    return OrganismConfig.quick(seed)


def _tiny_sae() -> OrganismSAEConfig:
    return OrganismSAEConfig(
        layers=(1,),
        sae=SAETrainConfig(d_sae=32, k=4, training_tokens=1024, batch_size=256),
        n_documents=10,
        include_datasets=False,
    )


@pytest.fixture()
def tiny_zoo(tmp_path: Path, quick_organism: OrganismArtifacts, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A zoo holding the quick organism and its SAE, in place of the package's."""
    sae_dir = train_organism_saes(quick_organism, _tiny_sae(), root=tmp_path / "build")
    root = tmp_path / "zoo"
    zoo.export_organism(
        quick_organism.run_dir,
        organism_run_id(quick_organism.config),
        quick_organism.config,
        sae_dir,
        _tiny_sae(),
        root / "seed0",
        measured={"note": "test"},
    )
    monkeypatch.setattr(zoo, "ZOO_DIR", root)
    return root


def test_a_shipped_organism_is_installed_not_trained(tiny_zoo, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "_train_model", lambda *a, **k: pytest.fail("trained a shipped organism"))
    art = train_organism(_tiny_cfg(), root=tmp_path / "runs")
    shipped = tiny_zoo / "seed0" / "model" / "model.safetensors"
    assert (art.model_dir / "model.safetensors").read_bytes() == shipped.read_bytes()
    assert json.loads((art.run_dir / "manifest.json").read_text())["source"] == "shipped:seed0"
    assert json.loads((art.run_dir / "train_log.json").read_text())["shipped_from"] == "seed0"
    model, _ = load_organism(art)
    assert not model.training and model.config.attention_dropout == 0.0  # loaded as the demo uses it

    import spillover.sae.train as sae_train

    monkeypatch.setattr(sae_train, "train_layer_saes", lambda *a, **k: pytest.fail("trained a shipped SAE"))
    sae_dir = train_organism_saes(art, _tiny_sae(), root=tmp_path / "runs")
    assert (sae_dir / "layer_1" / "sae_weights.safetensors").read_bytes() == (
        tiny_zoo / "seed0" / "sae" / "layer_1" / "sae_weights.safetensors"
    ).read_bytes()
    # Another SAE config is not shipped: it would train.
    other = OrganismSAEConfig(layers=(1,), sae=SAETrainConfig(d_sae=64, k=4), include_datasets=False)
    assert zoo.find_shipped_saes(art.run_dir.name, other) is None


def test_retrain_trains_into_its_own_folder_and_compares(tiny_zoo, tmp_path):
    installed = train_organism(_tiny_cfg(), root=tmp_path / "runs")
    retrained = train_organism(_tiny_cfg(), root=tmp_path / "runs", retrain=True)
    assert retrained.run_dir != installed.run_dir
    assert json.loads((retrained.run_dir / "manifest.json").read_text())["source"] == "trained"
    entry = pipeline.shipped_match(retrained)
    assert entry is not None and entry.name == "seed0"
    cmp = zoo.compare_with_shipped(retrained.model_dir, entry)
    # Same machine, same code, same seed: the weights should come out identical.
    assert cmp["identical"] is True and cmp["max_abs_diff"] == 0.0


def test_other_seeds_are_not_shipped_and_train(tiny_zoo):
    assert zoo.find_shipped(organism_run_id(_tiny_cfg(seed=5))) is None
    assert zoo.find_shipped(organism_run_id(_tiny_cfg(seed=0))) is not None


def test_a_broken_manifest_is_named(tmp_path):
    bad = tmp_path / "zoo" / "seed0"
    bad.mkdir(parents=True)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="seed0.*manifest"):
        zoo.shipped_organisms(tmp_path / "zoo")


def test_organism_train_cli_says_shipped_then_compares_a_retrain(tiny_zoo, tmp_path):
    from typer.testing import CliRunner

    from spillover.cli import app

    args = ["organism", "train", "--quick", "--root", str(tmp_path / "runs")]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "the shipped organism seed0" in first.output
    again = CliRunner().invoke(app, [*args, "--retrain"])
    assert again.exit_code == 0, again.output
    assert "vs the shipped seed0: bit-identical weights" in again.output
