from __future__ import annotations

import pytest
import torch

from spillover.sae.load import SAELoadError, expand_sae_spec, load_sae, load_saes, wrap_sae


def _standard_sae(d_in: int, d_sae: int, *, hook: str | None = None, seed: int = 0, dec_norm: float = 1.0):
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae)
    if hook is not None:
        cfg.metadata.hook_name = hook
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.b_enc.uniform_(-0.1, 0.1)
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(d_sae, d_in), dim=1) * dec_norm)
    return sae


def test_saelens_save_load_round_trip_gives_identical_codes(tiny_model, tmp_path):
    sae = _standard_sae(32, 48, hook="blocks.1.hook_resid_post", dec_norm=1.0)
    sae.save_model(tmp_path / "sae")
    handle = load_sae(tmp_path / "sae", tiny_model)
    x = torch.randn(10, 32)
    torch.testing.assert_close(handle.encode(x), sae.encode(x))
    torch.testing.assert_close(handle.decode(handle.encode(x)), sae.decode(sae.encode(x)))
    assert handle.site.module_path == "model.layers.1" and handle.layer == 1 and handle.key == "layer_1"
    assert handle.decoder().shape == (48, 32)


def test_decoder_norms_are_folded(tiny_model, tmp_path):
    sae = _standard_sae(32, 16, hook="blocks.0.hook_resid_post", dec_norm=3.0)
    x = torch.randn(6, 32)
    raw_codes = sae.encode(x)
    sae.save_model(tmp_path / "sae")
    handle = load_sae(tmp_path / "sae", tiny_model)
    torch.testing.assert_close(handle.decoder().norm(dim=-1), torch.ones(16))
    torch.testing.assert_close(handle.encode(x), raw_codes * 3.0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(handle.decode(handle.encode(x)), sae.decode(raw_codes), rtol=1e-5, atol=1e-5)


def test_topk_sae_that_cannot_fold_is_scaled_instead(tiny_model):
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=32, d_sae=16, k=3, rescale_acts_by_decoder_norm=False))
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, 16).unsqueeze(1) / sae.W_dec.norm(dim=-1, keepdim=True))
    x = torch.randn(5, 32)
    expected = sae.encode(x) * sae.W_dec.norm(dim=-1)
    handle = wrap_sae(sae, tiny_model, source="test", layer=0)
    torch.testing.assert_close(handle.encode(x), expected)
    assert int((handle.encode(x) != 0).sum(-1).max()) == 3
    torch.testing.assert_close(handle.decode(handle.encode(x)), sae.decode(sae.encode(x)))


def test_width_mismatch_raises_with_both_numbers(tiny_model, tmp_path):
    _standard_sae(64, 16, hook="blocks.0.hook_resid_post").save_model(tmp_path / "wide")
    with pytest.raises(SAELoadError, match=r"d_in=64.*hidden size 32"):
        load_sae(tmp_path / "wide", tiny_model)


def test_missing_or_mismatched_layer_raises(tiny_model, tmp_path):
    _standard_sae(32, 16, hook="blocks.5.hook_resid_post").save_model(tmp_path / "deep")
    with pytest.raises(SAELoadError, match="layer 5 does not exist"):
        load_sae(tmp_path / "deep", tiny_model)
    _standard_sae(32, 16, hook="blocks.0.hook_resid_post").save_model(tmp_path / "l0")
    with pytest.raises(SAELoadError, match="trained on layer 0 .* layer 1 was requested"):
        load_sae(tmp_path / "l0", tiny_model, layer=1)
    _standard_sae(32, 16).save_model(tmp_path / "nohook")
    with pytest.raises(SAELoadError, match="pass the layer"):
        load_sae(tmp_path / "nohook", tiny_model)
    assert load_sae(tmp_path / "nohook", tiny_model, layer=1).layer == 1


def test_bad_specs_raise(tmp_path):
    with pytest.raises(SAELoadError, match="release:sae_id"):
        load_sae("no-such-thing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAELoadError, match="no cfg.json"):
        load_sae(tmp_path / "empty")
    with pytest.raises(SAELoadError, match="cannot load SAE"):
        load_sae("not-a-release:layer_0")


def test_layer_folders_and_templates_expand(tiny_model, tmp_path):
    for layer in (0, 1):
        _standard_sae(32, 16, hook=f"blocks.{layer}.hook_resid_post", seed=layer).save_model(
            tmp_path / "saes" / f"layer_{layer}"
        )
    handles = load_saes(str(tmp_path / "saes"), tiny_model)
    assert [h.layer for h in handles] == [0, 1]
    assert [h.layer for h in load_saes(str(tmp_path / "saes" / "layer_{layer}"), tiny_model, [1, 0])] == [
        0,
        1,
    ]
    assert expand_sae_spec("rel:layer_{layer}/width_16k/canonical", [3, 5]) == [
        ("rel:layer_3/width_16k/canonical", 3),
        ("rel:layer_5/width_16k/canonical", 5),
    ]
    with pytest.raises(SAELoadError, match=r"not for \[7\]"):
        expand_sae_spec(str(tmp_path / "saes"), [7])


@pytest.mark.parametrize("kind", ["standard", "topk", "topk_unfolded", "jumprelu"])
def test_sparse_decode_equals_dense_decode(tiny_model, kind):
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    torch.manual_seed(0)
    d_in, d_sae = 32, 512
    if kind == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    elif kind == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    else:
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=2, rescale_acts_by_decoder_norm=kind == "topk"))
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(d_sae, d_in) * torch.rand(d_sae, 1) * 3)
        sae.W_enc.copy_(torch.randn(d_in, d_sae) * 0.05)
        sae.b_dec.normal_()
        if hasattr(sae, "b_enc"):
            sae.b_enc.fill_(-2.6 if kind in ("standard", "jumprelu") else 0.0)
    handle = wrap_sae(sae, tiny_model, source=kind, layer=0)
    x = torch.randn(64, d_in) * 3
    codes = handle.encode(x)
    density = float((codes != 0).float().mean())
    assert 0 < density < 0.01  # the sparse path is taken
    dense = sae.decode(codes / handle._scale if handle._scale is not None else codes).float()
    torch.testing.assert_close(handle.decode(codes), dense, rtol=1e-4, atol=1e-4)
