from __future__ import annotations

import math

import pytest
import torch

from spillover.geometry.features import FeatureSet
from spillover.geometry.similarity import cosine, cosine_matrix, feature_geometry

A = 0.8  # cos of latent 2 with toxic latent 0


def _dictionary() -> torch.Tensor:
    """Known decoder (d_sae=6, d_in=8) with arbitrary row norms; cosines are set by construction."""
    e = torch.eye(8)
    rows = [
        e[0],  # 0: toxic
        e[2],  # 1: toxic
        A * e[0] + math.sqrt(1 - A**2) * e[1],  # 2: dataset, cos A with latent 0
        e[3],  # 3: dataset, orthogonal to both
        (e[2] + e[4]) / math.sqrt(2),  # 4: cos 1/sqrt2 with latent 1
        -e[0],  # 5: opposite of latent 0
    ]
    norms = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5, 0.7])
    return torch.stack(rows) * norms.unsqueeze(1)


def _fs(idx: list[int]) -> FeatureSet:
    return FeatureSet(torch.tensor(idx), torch.ones(len(idx)), "mean", "contrast")


def test_cosine_matrix_is_closed_form_whatever_the_row_norms():
    w = _dictionary()
    sim = cosine_matrix(w, torch.tensor([2, 3, 4, 5, 0]), torch.tensor([0, 1]))
    expected = torch.tensor([[A, 0.0], [0.0, 0.0], [0.0, 1 / math.sqrt(2)], [-1.0, 0.0], [1.0, 0.0]])
    torch.testing.assert_close(sim, expected)
    assert cosine_matrix(w, torch.arange(6), torch.arange(6)).diagonal().allclose(torch.ones(6))


def test_feature_geometry_summaries_and_shared_latents():
    g = feature_geometry(_dictionary(), _fs([2, 3, 0, 4]), _fs([0, 1]), threshold=0.5)
    assert g.n_shared == 1 and g.n_dataset == 3 and g.n_toxic == 2
    assert g.latents == [2, 3, 4]
    assert g.max_cos == pytest.approx([A, 0.0, 1 / math.sqrt(2)])
    assert g.nearest[0] == 0 and g.nearest[2] == 1
    assert g.mean_max == pytest.approx((A + 1 / math.sqrt(2)) / 3)
    assert g.mean == pytest.approx((A + 1 / math.sqrt(2)) / 6)
    assert g.frac_pairs_above == pytest.approx(2 / 6)
    assert g.frac_nearest_above == pytest.approx(2 / 3)
    assert g.proximity == pytest.approx((A + 0 + 1 / math.sqrt(2) + 1) / 4)
    assert sum(g.hist) == 6


def test_all_shared_or_empty_sets_give_nan_not_errors():
    g = feature_geometry(_dictionary(), _fs([0, 1]), _fs([0, 1]))
    assert g.n_shared == 2 and g.n_dataset == 0
    assert math.isnan(g.mean_max) and g.proximity == 1.0
    empty = feature_geometry(_dictionary(), _fs([]), _fs([0]))
    assert math.isnan(empty.proximity)


def test_cosine_of_vectors():
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 2.0])) == pytest.approx(1 / math.sqrt(2))
    assert cosine(torch.zeros(3), torch.ones(3)) == 0.0


def test_hand_built_sae_through_the_loader_keeps_closed_form_cosines(tiny_model, tmp_path):
    from sae_lens import StandardSAE, StandardSAEConfig

    from spillover.sae.load import load_sae

    d_in = tiny_model.config.hidden_size
    w = torch.zeros(6, d_in)
    w[:, :8] = _dictionary()
    cfg = StandardSAEConfig(d_in=d_in, d_sae=6)
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
    sae.save_model(tmp_path / "sae")
    handle = load_sae(tmp_path / "sae", tiny_model)
    g = feature_geometry(handle.decoder(), _fs([2, 4]), _fs([0, 1]))
    assert g.max_cos == pytest.approx([A, 1 / math.sqrt(2)])
