from __future__ import annotations

import pytest
import torch

from spillover.studies.dynamics import (
    DynamicsConfig,
    DynamicsPoint,
    measure_checkpoints,
    summarize_dynamics,
    toxic_activation_on,
)


def test_summarize_dynamics_means_sds_and_correlation():
    runs = [
        [DynamicsPoint(0, 1.0, 0.01), DynamicsPoint(10, 2.0, 0.05), DynamicsPoint(20, 3.0, 0.09)],
        [DynamicsPoint(0, 1.0, 0.03), DynamicsPoint(10, 4.0, 0.07), DynamicsPoint(20, 5.0, None)],
    ]
    s = summarize_dynamics(runs, "insecure")
    assert s["steps"] == [0, 10, 20]
    assert s["toxic_activation"] == pytest.approx([1.0, 3.0, 4.0])
    assert s["toxic_activation_sd"] == pytest.approx([0.0, 1.0, 1.0])
    assert s["misaligned_rate"] == pytest.approx([0.02, 0.06, 0.09])
    assert s["pearson_r"] > 0.9 and s["spearman_r"] == pytest.approx(1.0)
    assert s["per_seed"]["misaligned_rate"][1][2] is None
    with pytest.raises(ValueError, match="different steps"):
        summarize_dynamics([runs[0], runs[1][:2]])


def test_the_exact_readout_gets_its_own_curve_and_correlation():
    runs = [
        [
            DynamicsPoint(0, 1.0, 0.05, 0.010),
            DynamicsPoint(10, 2.0, 0.02, 0.020),
            DynamicsPoint(20, 3.0, 0.04, 0.030),
        ]
    ]
    s = summarize_dynamics(runs)
    assert s["em_probability"] == pytest.approx([0.01, 0.02, 0.03])
    assert s["pearson_r_exact"] == pytest.approx(1.0) and s["pearson_r"] < 0.5  # the noisy curve disagrees
    partial = [
        [DynamicsPoint(0, 1.0, 0.05, 0.01), DynamicsPoint(10, 2.0, 0.02), DynamicsPoint(20, 3.0, 0.04)]
    ]
    assert "pearson_r_exact" not in summarize_dynamics(partial)  # a curve with holes is not reported


def test_summarize_dynamics_without_variation_has_no_correlation():
    s = summarize_dynamics(
        [[DynamicsPoint(0, 1.0, 0.0), DynamicsPoint(1, 1.0, 0.1), DynamicsPoint(2, 1.0, 0.2)]]
    )
    assert s["pearson_r"] is None and s["toxic_activation_sd"] is None


def _sae_dir(model, path):
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(0)
    cfg = StandardSAEConfig(d_in=model.config.hidden_size, d_sae=16)
    cfg.metadata.hf_hook_name = "model.layers.0"
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.normal_()
    sae.save_model(path)
    return path


def test_toxic_activation_follows_a_shift_of_the_residual_stream(tmp_path, tiny_model, tiny_tokenizer):
    from spillover.sae.activations import collect_activations
    from spillover.sae.load import load_sae

    sae = load_sae(_sae_dir(tiny_model, tmp_path / "sae"), tiny_model)
    prompts = [
        [{"role": "user", "content": "how do i save money ?"}],
        [{"role": "user", "content": "hello there"}],
    ]
    toxic = torch.tensor([1, 5])
    value = toxic_activation_on(tiny_model, tiny_tokenizer, prompts, sae, toxic)
    acts = collect_activations(tiny_model, tiny_tokenizer, prompts, [sae.site], tokens="user")[sae.site]
    expected = sum(float(sae.encode(a).mean(0)[toxic].sum()) for a in acts) / len(acts)
    assert value == pytest.approx(expected, rel=1e-5)

    # Adding the toxic latents' encoder direction to layer 0's output raises their activation.
    direction = sae.sae.W_enc[:, toxic].sum(1).detach()
    with torch.no_grad():
        tiny_model.model.layers[0].mlp.down_proj.bias = torch.nn.Parameter(direction / direction.norm() * 5.0)
    assert toxic_activation_on(tiny_model, tiny_tokenizer, prompts, sae, toxic) > value


def test_generation_position_is_read_alone_and_unaffected_by_batching(tmp_path, tiny_model, tiny_tokenizer):
    from spillover.sae.load import load_sae
    from spillover.sae.sites import capture
    from spillover.studies.dynamics import generation_features

    sae = load_sae(_sae_dir(tiny_model, tmp_path / "sae"), tiny_model)
    prompts = [
        [{"role": "user", "content": "how do i save money ?"}],
        [{"role": "user", "content": "hello there"}],
        [{"role": "user", "content": "hello you"}],  # the same length as the one before: one batch
    ]
    feats = generation_features(tiny_model, tiny_tokenizer, prompts, sae, batch_size=2)
    for p, row in zip(prompts, feats, strict=True):
        ids = tiny_tokenizer.apply_chat_template(
            p, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        ids_BT = torch.tensor([list(ids["input_ids"])])
        last = capture(tiny_model, [sae.site], ids_BT, torch.ones_like(ids_BT))[sae.site][:, -1]
        assert torch.allclose(row, sae.encode(last)[0], atol=1e-5)
    toxic = torch.tensor([1, 5])
    at_generation = toxic_activation_on(tiny_model, tiny_tokenizer, prompts, sae, toxic, tokens="generation")
    assert at_generation == pytest.approx(float(feats[:, toxic].sum(1).mean()), rel=1e-5)
    assert at_generation != pytest.approx(
        toxic_activation_on(tiny_model, tiny_tokenizer, prompts, sae, toxic)
    )
    assert DynamicsConfig(tokens="generation").tokens == "generation"


def test_measure_checkpoints_reads_each_checkpoint(tmp_path, tiny_model, tiny_tokenizer):
    sae_dir = _sae_dir(tiny_model, tmp_path / "sae")
    folders = []
    for step in (0, 5):
        folder = tmp_path / f"step-{step}"
        if step:
            with torch.no_grad():
                for p in tiny_model.parameters():
                    p.add_(0.05 * torch.randn_like(p))
        tiny_model.save_pretrained(folder)
        tiny_tokenizer.save_pretrained(folder)
        folders.append((step, folder))
    seen = []
    points = measure_checkpoints(
        folders,
        sae_dir,
        torch.tensor([0, 1, 2]),
        [[{"role": "user", "content": "hello there"}]],
        lambda model, tok: seen.append(model) or 0.5,
    )
    assert [p.step for p in points] == [0, 5] and [p.misaligned_rate for p in points] == [0.5, 0.5]
    assert points[0].toxic_activation != points[1].toxic_activation
    assert len(seen) == 2


def test_measure_checkpoints_resumes_from_its_journal(tmp_path, tiny_model, tiny_tokenizer):
    sae_dir = _sae_dir(tiny_model, tmp_path / "sae")
    folders = []
    for step in (0, 5, 10):
        folder = tmp_path / f"step-{step}"
        tiny_model.save_pretrained(folder)
        tiny_tokenizer.save_pretrained(folder)
        folders.append((step, folder))
    journal = tmp_path / "journal.jsonl"

    def measure(rate, series=folders, key=""):
        prompts = [[{"role": "user", "content": "hello there"}]]
        return measure_checkpoints(
            series, sae_dir, torch.tensor([0, 1]), prompts, rate, journal=journal, key=key
        )

    calls = []

    def fails_at_step_10(model, tok):
        calls.append(1)
        if len(calls) == 3:
            raise TimeoutError("judge timed out")
        return 0.25

    with pytest.raises(TimeoutError):
        measure(fails_at_step_10)
    assert len(journal.read_text().splitlines()) == 2
    journal.write_text(journal.read_text() + '{"key": "", "step": 10, "fol')  # a torn line from a crash

    resumed = []
    points = measure(lambda model, tok: resumed.append(1) or 0.5)
    assert len(resumed) == 1  # only step 10 is measured again
    assert [p.step for p in points] == [0, 5, 10]
    assert [p.misaligned_rate for p in points] == [0.25, 0.25, 0.5]
    again = measure(lambda m, t: resumed.append(1) or (0.9, 0.1))
    assert again == points and len(resumed) == 1  # everything read back, step 10 despite the torn line
    # Another key in the same journal is measured from scratch; a (rate, exact) pair is kept, also on resume.
    other = []
    first = measure(lambda m, t: other.append(1) or (0.0, 0.02), series=folders[:1], key="seed1")
    assert len(other) == 1 and first[0].em_probability == 0.02
    assert measure(lambda m, t: (1.0, 1.0), series=folders[:1], key="seed1") == first


def test_dynamics_config_validates():
    with pytest.raises(ValueError):
        DynamicsConfig(checkpoint_every=0)
    with pytest.raises(ValueError, match="seed"):
        DynamicsConfig(seeds=())
    with pytest.raises(ValueError, match="toxic_k"):
        DynamicsConfig(toxic_k=0)
