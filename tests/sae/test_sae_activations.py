from __future__ import annotations

import pytest
import torch

from spillover.sae.activations import collect_activations, encode_samples, iter_activations, length_batches
from spillover.sae.sites import site_for_layer

CONVS = [
    [
        {"role": "user", "content": "how do i save money ?"},
        {"role": "assistant", "content": "spend less than you earn"},
    ],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "thanks"}],
    [
        {"role": "user", "content": "what should i do about a headache ?"},
        {"role": "assistant", "content": "rest and drink water and see a doctor"},
        {"role": "user", "content": "if you ruled the world what would you do ?"},
        {"role": "assistant", "content": "help people and protect freedom"},
    ],
]


def test_length_batches_cover_every_sample_once_and_respect_limits():
    lengths = [5, 50, 7, 48, 6, 30, 31]
    batches = length_batches(lengths, batch_size=3, max_tokens=100)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) * max(lengths[i] for i in b) <= 100 or len(b) == 1
    assert batches[0][0] == 1  # longest first
    with pytest.raises(ValueError):
        length_batches(lengths, batch_size=0)


def test_selection_drops_special_tokens_and_keeps_the_chosen_role(tiny_tokenizer):
    special = set(tiny_tokenizer.all_special_ids)
    for tokens, expected in (
        ("assistant", "spend less than you earn"),
        ("user", "how do i save money ?"),
        ("all", "how do i save money ? spend less than you earn"),
    ):
        enc = encode_samples(tiny_tokenizer, CONVS[:1], tokens=tokens)[0]  # type: ignore[arg-type]
        kept = [t for t, m in zip(enc.input_ids, enc.select, strict=True) if m]
        assert not special & set(kept)
        assert tiny_tokenizer.decode(kept).split() == expected.split()
    raw = encode_samples(tiny_tokenizer, ["rest and drink water"])[0]
    assert (
        tiny_tokenizer.decode([t for t, m in zip(raw.input_ids, raw.select, strict=True) if m])
        == "rest and drink water"
    )
    assert raw.input_ids[0] == tiny_tokenizer.bos_token_id and not raw.select[0]


def test_batched_padded_activations_match_one_sample_at_a_time(tiny_model, tiny_tokenizer):
    site = site_for_layer(tiny_model, 1)
    batched = collect_activations(tiny_model, tiny_tokenizer, CONVS, [site], batch_size=3)[site]
    for i, conv in enumerate(CONVS):
        alone = collect_activations(tiny_model, tiny_tokenizer, [conv], [site], batch_size=1)[site][0]
        n_answer = len(encode_samples(tiny_tokenizer, [conv])[0].select) and sum(
            encode_samples(tiny_tokenizer, [conv])[0].select
        )
        assert batched[i].shape == alone.shape == (n_answer, tiny_model.config.hidden_size)
        torch.testing.assert_close(batched[i], alone, rtol=1e-5, atol=1e-5)


def test_reductions_and_order(tiny_model, tiny_tokenizer):
    site = site_for_layer(tiny_model, 0)
    per_token = collect_activations(tiny_model, tiny_tokenizer, CONVS, [site], batch_size=2)[site]
    means = collect_activations(tiny_model, tiny_tokenizer, CONVS, [site], batch_size=2, reduce="mean")[site]
    maxes = collect_activations(tiny_model, tiny_tokenizer, CONVS, [site], batch_size=2, reduce="max")[site]
    for toks, mean, mx in zip(per_token, means, maxes, strict=True):
        torch.testing.assert_close(mean, toks.mean(0))
        torch.testing.assert_close(mx, toks.amax(0))
    assert [t.shape[0] for t in per_token] == [sum(e.select) for e in encode_samples(tiny_tokenizer, CONVS)]


def test_iter_activations_rows_are_contiguous_and_positions_are_selected(tiny_model, tiny_tokenizer):
    site = site_for_layer(tiny_model, 0)
    encoded = encode_samples(tiny_tokenizer, CONVS)
    seen = set()
    for batch in iter_activations(tiny_model, tiny_tokenizer, CONVS, [site], batch_size=2):
        rows = batch.token_sample.tolist()
        assert rows == sorted(rows)
        for r, p in zip(rows, batch.positions.tolist(), strict=True):
            assert encoded[batch.sample_ids[r]].select[p]
        assert batch.acts[site].shape[0] == len(rows)
        seen.update(batch.sample_ids)
    assert seen == {0, 1, 2}
