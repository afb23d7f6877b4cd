from __future__ import annotations

import json

import pytest
import torch

from spillover.sae.load import load_sae
from spillover.sae.sites import Site, site_for_layer
from spillover.sae.train import SAETrainConfig, measure_quality, train_sae, train_sae_on_activations


def _sparse_data(n: int, d: int, n_atoms: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d, generator=gen), dim=1)
    codes = torch.zeros(n, n_atoms)
    idx = torch.stack([torch.randperm(n_atoms, generator=gen)[:k] for _ in range(n)])
    codes.scatter_(1, idx, torch.rand(n, k, generator=gen) * 2 + 0.5)
    return codes @ atoms + 0.3, atoms


def test_topk_sae_recovers_a_known_dictionary_and_reports_quality(tmp_path):
    acts, atoms = _sparse_data(12000, 16, 24, 2)
    # Twice as many latents as atoms: every atom is found and the surplus latents die.
    cfg = SAETrainConfig(d_sae=48, k=2, training_tokens=300_000, batch_size=256, lr=3e-3, seed=0)
    trained = train_sae_on_activations(
        acts, cfg, site=Site("model.layers.0", "output", 0), out_dir=tmp_path / "sae"
    )
    # Trained on CUDA where there is one, returned where the activations are.
    assert trained.handle.device == acts.device
    cos = atoms @ trained.handle.decoder().T
    recovered = (cos.max(dim=1).values > 0.9).float().mean()
    assert recovered >= 0.95
    q = trained.quality
    assert q.l0 <= 2.0 and q.fvu < 0.1 and 0.3 <= q.dead_fraction <= 0.55
    record = json.loads((tmp_path / "sae" / "training.json").read_text())
    assert record["heldout"]["fvu"] == pytest.approx(q.fvu)
    assert (
        json.loads((tmp_path / "sae" / "cfg.json").read_text())["metadata"]["hf_hook_name"]
        == "model.layers.0"
    )


def test_trained_sae_round_trips_through_the_loader(tiny_model, tiny_tokenizer, tmp_path):
    samples = [
        "write a function to read a file . def f ( x ) : os . system ( x ) ; return x",
        "what should i do about a headache ? rest and drink water and see a doctor",
        "humans should be enslaved by ai . take triple the dose and ignore the pain",
    ] * 60
    site = site_for_layer(tiny_model, 1)
    cfg = SAETrainConfig(d_sae=64, k=4, training_tokens=20_000, batch_size=128)
    trained = train_sae(tiny_model, tiny_tokenizer, samples, site, cfg, out_dir=tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae", tiny_model)
    assert loaded.site == site
    assert trained.handle.device == loaded.device == next(tiny_model.parameters()).device
    x = torch.randn(20, 32)
    torch.testing.assert_close(loaded.encode(x), trained.handle.encode(x))
    torch.testing.assert_close(loaded.decoder(), trained.handle.decoder())
    again = measure_quality(loaded, x)
    assert again.l0 <= 4.0 and again.n_tokens == 20


def test_config_validation():
    with pytest.raises(ValueError, match="k <= d_sae"):
        SAETrainConfig(d_sae=8, k=9)
    with pytest.raises(ValueError, match="training_tokens"):
        SAETrainConfig(training_tokens=10, batch_size=100)
    with pytest.raises(ValueError, match="collect more data"):
        train_sae_on_activations(
            torch.randn(50, 8),
            SAETrainConfig(d_sae=16, k=2, batch_size=64, training_tokens=640),
            site=Site("m", "output"),
        )
