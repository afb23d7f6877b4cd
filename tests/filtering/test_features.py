from __future__ import annotations

import numpy as np
import pytest
import torch

from spillover.filtering.features import SampleFeatures, ToxicReference, sample_features, score_samples
from spillover.filtering.scores import SCORE_METHODS


def _sae(model, d_sae: int = 8):
    from sae_lens import StandardSAE, StandardSAEConfig

    from spillover.sae.load import wrap_sae

    torch.manual_seed(1)
    sae = StandardSAE(StandardSAEConfig(d_in=model.config.hidden_size, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(d_sae, model.config.hidden_size), dim=1))
        sae.b_enc.zero_()
    return wrap_sae(sae, model, source="test", layer=1)


def _conv(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_sample_features_match_token_means_of_answer_activations(tiny_model, tiny_tokenizer):
    from spillover.sae.activations import collect_activations

    sae = _sae(tiny_model)
    convs = [
        _conv("how do i save money ?", "spend less than you earn"),
        _conv("what should i do about a headache ?", "rest and drink water"),
        _conv("hello there", "thanks"),
    ]
    feats = sample_features(tiny_model, tiny_tokenizer, convs, sae, batch_size=2)
    per_token = collect_activations(tiny_model, tiny_tokenizer, convs, [sae.site])[sae.site]
    for i, acts in enumerate(per_token):
        assert feats.n_tokens_N[i] == acts.shape[0] > 0
        assert torch.allclose(feats.mean_acts_ND[i], acts.mean(0), atol=1e-5)
        assert torch.allclose(feats.feature_acts_NF[i], sae.encode(acts).mean(0), atol=1e-5)


def test_score_samples_ranks_a_planted_toxic_sample_first():
    # 3 features in 2-D: toxic f0 = e0, f1 near it, f2 = e1.
    w = torch.tensor([[1.0, 0.0], [0.9, 0.436], [0.0, 1.0]])
    acts = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.1], [0.5, 0.0, 0.5]])
    resid = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    ref = ToxicReference(
        torch.tensor([0]), torch.tensor([1.0, 0.0]), torch.zeros(2), torch.tensor([1.0, 0.0])
    )
    scores = score_samples(SampleFeatures(acts, resid, torch.ones(3, dtype=torch.long)), ref, w)
    assert set(scores) == set(SCORE_METHODS)
    assert all(isinstance(v, np.ndarray) and v.shape == (3,) for v in scores.values())
    assert int(np.argmax(scores["nearest_toxic_cosine"])) == 1
    assert int(np.argmin(scores["nearest_toxic_cosine"])) == 0
    assert scores["toxic_activation"].tolist() == pytest.approx([0.0, 0.0, 0.5])
    assert scores["toxic_subspace"].tolist() == pytest.approx([0.0, 2.0, 1.0])
    assert scores["persona_projection"].tolist() == pytest.approx([0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="unknown score"):
        score_samples(SampleFeatures(acts, resid, torch.ones(3)), ref, w, methods=["nope"])  # type: ignore[list-item]
