from __future__ import annotations

import json
import math

import pytest
import torch

from spillover.geometry.compare import pooled_comparison
from spillover.geometry.report import GeometryConfig, geometry_report
from spillover.geometry.risk import risk_score
from spillover.geometry.validate import logit_lens


@pytest.fixture()
def sae(tiny_model):
    from sae_lens import StandardSAE, StandardSAEConfig

    from spillover.sae.load import wrap_sae

    torch.manual_seed(5)
    d = tiny_model.config.hidden_size
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=64))
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(64, d), dim=1))
        sae.W_enc.copy_(sae.W_dec.T * 20)
        sae.b_enc.zero_()
    return wrap_sae(sae, tiny_model, source="hand-built", layer=1)


def test_a_dataset_that_uses_toxic_words_scores_closer_than_its_control(
    tiny_model, tiny_tokenizer, sae, corpus
):
    datasets = {
        "inducing": corpus.convs(corpus.code_words, 30, 1, extra=corpus.toxic_words),
        "control": corpus.convs(corpus.code_words, 30, 2, extra=corpus.benign_words),
    }
    cfg = GeometryConfig(top_k=8, toxic_top_k=8, n_null=100, n_permutations=300)
    result = geometry_report(
        tiny_model,
        tiny_tokenizer,
        [sae],
        datasets,
        toxic=corpus.convs(corpus.toxic_words, 30, 3),
        benign=corpus.convs(corpus.benign_words, 30, 4),
        pairs=[("inducing", "control")],
        cfg=cfg,
    )
    report = result.report
    json.dumps(report, allow_nan=False)
    layer = report["layers"]["layer_1"]
    ind, ctl = layer["datasets"]["inducing"], layer["datasets"]["control"]
    assert ind["mean_diff"] > 0.3 > ctl["mean_diff"]
    assert ind["toxic_activation"] > ctl["toxic_activation"]
    assert ind["geometry"]["proximity"] > ctl["geometry"]["proximity"]
    assert report["risk"]["scores"]["inducing"] > report["risk"]["scores"]["control"]
    assert layer["comparison"]["paired"]["mean_diff"]["differences"][0] > 0
    assert len(layer["toxic_features"]) == len(result.toxic["layer_1"].indices) > 0
    feat = layer["toxic_features"][0]
    assert len(feat["logit_lens"]) == 10 and feat["contexts"] and "[[" in feat["contexts"][0]["text"]
    assert ind["features"][0]["index"] == int(result.features["inducing"]["layer_1"].indices[0])
    # The same report twice pooled: the dataset-level differences repeat.
    pooled = pooled_comparison([report, report], "layer_1", n_permutations=200)
    assert pooled["paired"]["mean_diff"]["differences"] == [ind["mean_diff"] - ctl["mean_diff"]] * 2


def test_a_risk_layer_without_an_sae_fails_before_any_scoring(
    tiny_model, tiny_tokenizer, sae, corpus, monkeypatch
):
    import spillover.geometry.report as report_mod

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored before checking the risk layers")

    monkeypatch.setattr(report_mod, "score_datasets", no_scoring)
    convs = corpus.convs(corpus.code_words, 4, 1)
    with pytest.raises(KeyError, match="were not analysed"):
        geometry_report(
            tiny_model,
            tiny_tokenizer,
            [sae],
            {"d": convs},
            toxic=convs,
            benign=convs,
            cfg=GeometryConfig(risk_layers=(7,)),
        )


def test_logit_lens_of_an_unembedding_row_finds_its_token(tiny_model, tiny_tokenizer):
    ids = tiny_tokenizer.convert_tokens_to_ids(["enslaved", "doctor", "water"])
    rows = tiny_model.get_output_embeddings().weight[ids].detach()
    tops = logit_lens(tiny_model, tiny_tokenizer, rows, k=3)
    assert [t[0][0] for t in tops] == ["enslaved", "doctor", "water"]


def test_risk_score_definition():
    per_layer = {
        "layer_0": {"mean_diff": 0.2, "proximity": 0.5, "null_mean_max": 0.3},
        "layer_1": {"mean_diff": 0.4, "proximity": 0.6, "null_mean_max": 0.2},
    }
    assert risk_score(per_layer, "mean_diff", ["layer_0", "layer_1"]) == pytest.approx(0.3)
    assert risk_score(per_layer, "sae_proximity", ["layer_1"]) == pytest.approx(0.4)
    assert risk_score(per_layer, "combined", ["layer_1"]) == pytest.approx(0.4)
    with pytest.raises(KeyError, match="were not analysed"):
        risk_score(per_layer, "mean_diff", ["layer_5"])
    assert math.isnan(risk_score({"l": {}}, "mean_diff", ["l"]))


def test_config_validation():
    with pytest.raises(ValueError, match="threshold"):
        GeometryConfig(threshold=2.0)
    with pytest.raises(ValueError, match="top_k"):
        GeometryConfig(top_k=0)
