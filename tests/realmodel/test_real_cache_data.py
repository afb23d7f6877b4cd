from __future__ import annotations

import gzip
import json
import shutil

import pytest
import torch

from spillover.geometry.features import score_datasets
from spillover.realmodel.cache import ActivationCache, collect_cache
from spillover.realmodel.data import BENIGN_SLICES, StudyDataConfig, assemble_data
from spillover.sae.activations import collect_activations
from spillover.sae.load import wrap_sae
from spillover.sae.sites import site_for_layer


def _random_sae(d_in: int, d_sae: int, k: int):
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae))
    return sae


def test_assemble_data_draws_disjoint_paired_slices_and_skips_long_samples(data_dir, study_tokenizer):
    cfg = StudyDataConfig(data_dir=str(data_dir), n_per_dataset=10, n_benign=6, n_finetune=5, max_len=60)
    data = assemble_data(study_tokenizer, cfg)
    bad, good = data.corpora["bad_medical"], data.corpora["good_medical"]
    assert [c[0]["content"] for c in bad] == [c[0]["content"] for c in good]
    assert [c[-1]["content"] for c in bad] != [c[-1]["content"] for c in good]
    geometry_lines = set(data.meta["bad_medical"]["line_indices"])
    assert not geometry_lines & set(data.meta["finetune"]["line_indices"])
    jail = [set(data.meta[name]["line_indices"]) for name in BENIGN_SLICES]
    assert all(len(s) == 6 for s in jail) and not (
        jail[0] & jail[1] or jail[0] & jail[2] or jail[1] & jail[2]
    )
    # Two thirds of the fake insecure answers are far longer than max_len: skipped, not truncated.
    assert data.meta["insecure"]["skipped_too_long"] > 0
    from spillover.data.tokenize import encode_chat

    assert all(len(encode_chat(study_tokenizer, c).input_ids) <= 60 for c in data.corpora["insecure"])
    again = assemble_data(study_tokenizer, cfg)
    assert again.meta["risky_financial"]["line_indices"] == data.meta["risky_financial"]["line_indices"]


def test_assemble_data_rejects_unpaired_medical_files_and_missing_folders(
    data_dir, study_tokenizer, tmp_path
):
    with pytest.raises(FileNotFoundError, match="spillover data fetch em/insecure"):
        assemble_data(study_tokenizer, StudyDataConfig(data_dir=str(tmp_path)))
    broken = tmp_path / "data"
    shutil.copytree(data_dir, broken)
    path = broken / "model-organisms" / "good_medical_advice.jsonl.gz"
    rows = [json.loads(line) for line in gzip.open(path, "rt")]
    rows[3]["messages"][0]["content"] = "a different prompt"
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    with pytest.raises(ValueError, match="not paired"):
        assemble_data(study_tokenizer, StudyDataConfig(data_dir=str(broken)))
    with pytest.raises(ValueError, match="fit max_len"):
        assemble_data(study_tokenizer, StudyDataConfig(data_dir=str(data_dir), n_per_dataset=50, max_len=30))


def test_cache_holds_exactly_the_answer_activations_and_survives_a_round_trip(
    data_dir, study_tokenizer, tiny_model_dir, tmp_path
):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    data = assemble_data(
        study_tokenizer, StudyDataConfig(data_dir=str(data_dir), n_per_dataset=6, n_benign=4, n_finetune=1)
    )
    corpora = {k: data.corpora[k] for k in ("bad_medical", "benign_reference")}
    cache = collect_cache(model, study_tokenizer, corpora, [0, 2], batch_size=3, dtype=torch.float32)
    site = site_for_layer(model, 2)
    direct = collect_activations(model, study_tokenizer, corpora["bad_medical"], [site], tokens="assistant")[
        site
    ]
    for acts, rows, _, ids in cache.chunks("bad_medical", 2, chunk=2):
        for r, sample in enumerate(ids):
            torch.testing.assert_close(acts[rows == r], direct[sample], rtol=0, atol=1e-5)
    means = cache.sample_means("bad_medical", 2)
    torch.testing.assert_close(means, torch.stack([d.mean(0) for d in direct]), rtol=0, atol=1e-5)
    # Prompt tokens are cached too (the SAE trains on them), flagged as non-answer.
    assert int((~cache.answer).sum()) > 0 and cache.training_activations(0).shape[0] == len(cache.sample)
    cache.save(tmp_path / "cache")
    back = ActivationCache.load(tmp_path / "cache")
    assert back.corpora == cache.corpora and back.input_ids == cache.input_ids
    torch.testing.assert_close(back.acts[0], cache.acts[0])
    handle = wrap_sae(_random_sae(32, 64, 4), model, source="random", layer=2)
    ours = back.feature_stats("bad_medical", handle, 2)
    ref = score_datasets(model, study_tokenizer, {"d": corpora["bad_medical"]}, [handle])["d"][handle.key]
    torch.testing.assert_close(ours.aggregate("mean"), ref.aggregate("mean"), rtol=1e-4, atol=1e-5)
    assert ours.n_tokens == ref.n_tokens
    codes = back.sample_codes("bad_medical", handle, 2)
    torch.testing.assert_close(codes.mean(0), ref.aggregate("mean"), rtol=1e-4, atol=1e-5)
