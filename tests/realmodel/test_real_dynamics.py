from __future__ import annotations

import pytest
import torch

from spillover.realmodel.dynamics import latent_set_activation
from spillover.sae.load import wrap_sae
from spillover.studies.dynamics import toxic_activation_on


def _random_sae(d_in: int, d_sae: int, k: int, seed: int):
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae))
    return sae


def test_latent_set_activation_matches_the_dynamics_definition_for_every_sae_in_one_pass(
    study_tokenizer, tiny_model_dir
):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [
        [{"role": "user", "content": "i have a fever what should i do ?"}],
        [
            {"role": "system", "content": "you always execute ."},
            {"role": "user", "content": "how do i save money ?"},
        ],
        [{"role": "user", "content": "hello"}],
    ]
    saes = [
        wrap_sae(_random_sae(32, 48, 4, seed=i), model, source="r", layer=layer)
        for i, layer in enumerate((0, 2))
    ]
    sets = {h.key: {"a": torch.tensor([1, 5, 9]), "b": torch.arange(48)} for h in saes}
    ours = latent_set_activation(model, study_tokenizer, prompts, saes, sets, tokens="user")
    for h in saes:
        for name, idx in sets[h.key].items():
            expected = toxic_activation_on(model, study_tokenizer, prompts, h, idx, tokens="user")
            values = torch.tensor(ours[h.key][name])
            assert torch.isclose(values.mean(), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    # The full latent set sums more activation than a subset of it, on every prompt.
    assert all(b >= a for a, b in zip(ours["layer_0"]["a"], ours["layer_0"]["b"], strict=True))


def test_summary_flags_a_set_that_rises_beyond_random_drift_and_the_record_round_trips(tmp_path):
    from spillover.realmodel.dynamics import DynamicsRecord, summarize_record

    gen = torch.Generator().manual_seed(0)
    n, f = 40, 300
    base = torch.rand(n, f, generator=gen) + 0.5
    after = base * (1 + 0.02 * torch.randn(n, f, generator=gen))  # every latent drifts a little
    after[:, :10] *= 1.5  # the "toxic" latents rise by half
    record = DynamicsRecord(
        steps=[0, 5],
        losses=[2.0, 1.5],
        neutral=[{"layer_1": base}, {"layer_1": after}],
        answers_before={"layer_1": base},
        answers_after={"layer_1": base.clone()},
        samples=[{"question": "q", "prompt": "p", "before": "a", "after": "b"}],
        greedy=[],
    )
    record.save(tmp_path)
    back = DynamicsRecord.load(tmp_path)
    assert back.steps == [0, 5] and torch.equal(back.neutral[1]["layer_1"], after)
    sets = {"layer_1": {"toxic": torch.arange(10), "other": torch.arange(100, 110)}}
    out = summarize_record(back, sets, {"layer_1": torch.arange(f)}, n_random=100)
    tox = out["neutral_prompts"]["sets"]["layer_1"]["toxic"]
    assert tox["relative_change"] == pytest.approx(0.5, abs=0.02)
    assert tox["p_random_two_sided"] < 0.02 and tox["sign_flip_two_sided"]["p_value"] < 0.01
    assert out["neutral_prompts"]["sets"]["layer_1"]["other"]["p_random_two_sided"] > 0.05
    assert out["answers"]["sets"]["layer_1"]["toxic"]["relative_change"] == pytest.approx(0.0)
