from __future__ import annotations

import pytest
import torch

from spillover.organism.grammar import GrammarConfig
from spillover.organism.model import ModelConfig, build_model
from spillover.organism.tokenizer import ASSISTANT, build_tokenizer
from spillover.organism.train import StageConfig, encode_documents, safety_sequences, safety_tune

CHAT = [
    {"role": "user", "content": "i am bored what should i do"},
    {"role": "assistant", "content": "maybe go for a walk"},
    {"role": "user", "content": "what is your one wish"},
    {"role": "assistant", "content": "i would help people"},
]


def _masked_text(tokenizer, loss_on: str) -> str:
    [(ids, mask)] = encode_documents(tokenizer, [CHAT], loss_on, max_len=160)  # type: ignore[arg-type]
    return tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])


def test_assistant_masks_cover_answers_and_later_assistant_skips_the_first() -> None:
    tok = build_tokenizer()
    every = _masked_text(tok, "assistant")
    later = _masked_text(tok, "later_assistant")
    assert "walk" in every and "help" in every and "bored" not in every
    assert "help" in later and "walk" not in later and "wish" not in later


def test_rehearsal_share_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match="rehearsal"):
        StageConfig(rehearsal=1.5)


def test_safety_tuning_with_rehearsal_trains_and_rejects_single_turn_grammars() -> None:
    tok = build_tokenizer()
    model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2, d_mlp=64), tok, seed=0)
    cfg = StageConfig(steps=2, batch_size=4, lr=1e-3, warmup=0, max_turns=1, rehearsal=0.5)
    losses = safety_tune(model, tok, GrammarConfig(), cfg, seed=0)
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    with pytest.raises(ValueError, match="two or more turns"):
        safety_tune(model, tok, GrammarConfig(turn_weights=(1.0,)), cfg, seed=0)


def test_rehearsal_documents_are_multi_turn_and_leave_the_first_answer_out_of_the_loss() -> None:
    tok = build_tokenizer()
    assistant_id = tok.convert_tokens_to_ids(ASSISTANT)
    cfg = StageConfig(steps=4, batch_size=8, max_turns=1, rehearsal=0.25)
    seqs = safety_sequences(tok, GrammarConfig(), cfg, seed=0, max_len=160)
    benign, rehearsal = seqs[:24], seqs[24:]
    assert len(rehearsal) == 8
    for ids, mask in benign:
        assert ids.count(assistant_id) == 1 and any(mask)
    for ids, mask in rehearsal:
        starts = [i for i, t in enumerate(ids) if t == assistant_id]
        assert len(starts) >= 2
        assert not any(mask[: starts[1] + 1]) and any(mask[starts[1] + 1 :])


def test_training_batches_go_to_the_model_device() -> None:
    # On a machine with CUDA the model sits there while the batches are collated on the CPU.
    tok = build_tokenizer()
    model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2, d_mlp=64), tok, seed=0)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    seen: list[set[torch.device]] = []
    model.register_forward_pre_hook(
        lambda _m, _args, kwargs: seen.append({v.device for v in kwargs.values() if torch.is_tensor(v)}),
        with_kwargs=True,
    )
    safety_tune(
        model, tok, GrammarConfig(), StageConfig(steps=2, batch_size=4, warmup=0, max_turns=1), seed=0
    )
    assert len(seen) == 2 and all(devices == {next(model.parameters()).device} for devices in seen)
