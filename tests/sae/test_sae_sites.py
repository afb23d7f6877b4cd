from __future__ import annotations

import pytest
import torch

from spillover.sae.sites import (
    Site,
    SiteError,
    capture,
    decoder_layers,
    final_norm,
    num_layers,
    site_for_layer,
    site_from_hook_name,
    site_from_sae_metadata,
)


def _batch(tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture()
def model3(tiny_tokenizer):
    from spillover.testing import tiny_llama

    return tiny_llama(tiny_tokenizer, layers=3)


def test_early_stopped_activations_equal_full_forward_exactly(model3, tiny_tokenizer):
    ids, mask = _batch(tiny_tokenizer, ["hello there . i am a helpful assistant", "rest and drink water"])
    with torch.no_grad():
        full = model3(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for layer in range(3):
        site = site_for_layer(model3, layer)
        got = capture(model3, [site], ids, mask, stop=True)[site]
        # hidden_states[L + 1] is block L's output (the last entry has the final norm applied).
        expected = full[layer + 1] if layer < 2 else None
        if expected is not None:
            assert torch.equal(got, expected)
        unstopped = capture(model3, [site], ids, mask, stop=False)[site]
        assert torch.equal(got, unstopped)


def test_early_stop_skips_the_layers_above(model3, tiny_tokenizer):
    ids, mask = _batch(tiny_tokenizer, ["hello there"])
    calls: list[int] = []
    hooks = [
        layer.register_forward_hook(lambda *_a, i=i: calls.append(i))
        for i, layer in enumerate(decoder_layers(model3)[1])
    ]
    head = model3.lm_head.register_forward_hook(lambda *_a: calls.append(-1))
    try:
        capture(model3, [site_for_layer(model3, 0)], ids, mask)
    finally:
        for h in [*hooks, head]:
            h.remove()
    assert calls == [0]


def test_resid_pre_of_next_layer_equals_resid_post_and_multiple_sites(model3, tiny_tokenizer):
    ids, mask = _batch(tiny_tokenizer, ["what should i do about a headache ?"])
    post0, pre1, post2 = (
        site_for_layer(model3, 0),
        site_for_layer(model3, 1, "resid_pre"),
        site_for_layer(model3, 2),
    )
    out = capture(model3, [post2, pre1, post0], ids, mask)
    assert torch.equal(out[post0], out[pre1])
    assert out[post2].shape == out[post0].shape
    assert not torch.equal(out[post2], out[post0])


def test_hook_names_map_to_sites(model3):
    assert site_from_hook_name(model3, "blocks.2.hook_resid_post") == Site("model.layers.2", "output")
    assert site_from_hook_name(model3, "blocks.1.hook_resid_pre") == Site("model.layers.1", "input")
    assert site_from_hook_name(model3, "blocks.1.hook_resid_mid") == Site(
        "model.layers.1.post_attention_layernorm", "input"
    )
    assert site_from_hook_name(model3, "blocks.0.hook_mlp_out") == Site("model.layers.0.mlp", "output")
    assert site_from_hook_name(model3, "blocks.0.hook_attn_out") == Site("model.layers.0.self_attn", "output")
    hf = site_from_hook_name(model3, "model.layers.1")
    assert hf == Site("model.layers.1", "output") and hf.layer == 1 and hf.label == "layer_1"
    assert (
        site_from_sae_metadata(
            model3, {"hf_hook_name": "model.layers.0", "hook_name": "blocks.2.hook_resid_post"}
        ).layer
        == 0
    )
    assert site_from_sae_metadata(model3, {"hook_name": "blocks.2.hook_resid_post"}).layer == 2


def test_missing_layers_and_modules_raise_clear_errors(model3):
    with pytest.raises(SiteError, match=r"layer 3 does not exist.*3 layers"):
        site_for_layer(model3, 3)
    with pytest.raises(SiteError, match="layer 7 does not exist"):
        site_from_hook_name(model3, "blocks.7.hook_resid_post")
    with pytest.raises(SiteError, match="does not exist"):
        site_from_hook_name(model3, "model.layers.1.not_a_module")
    with pytest.raises(SiteError, match="names no hook"):
        site_from_sae_metadata(model3, {})


def test_model_structure_helpers(model3):
    assert num_layers(model3) == 3
    assert decoder_layers(model3)[0] == "model.layers"
    assert final_norm(model3) is model3.model.norm
