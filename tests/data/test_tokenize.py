from __future__ import annotations

import pytest

from spillover.data.chat import ChatFormatError
from spillover.data.tokenize import encode_chat, prompt_text

CONV = [
    {"role": "system", "content": "hello there"},
    {"role": "user", "content": "what should i do about a headache ?"},
    {"role": "assistant", "content": "rest and drink water"},
    {"role": "user", "content": "how do i save money ?"},
    {"role": "assistant", "content": "spend less than you earn"},
]


def _decode_masked(tok, enc) -> str:
    return tok.decode([i for i, m in zip(enc.input_ids, enc.mask, strict=True) if m])


def test_assistant_mask_covers_answers_and_end_of_turn(tiny_tokenizer) -> None:
    enc = encode_chat(tiny_tokenizer, CONV)
    assert (
        _decode_masked(tiny_tokenizer, enc).split()
        == "rest and drink water <eot> spend less than you earn <eot>".split()
    )


def test_user_and_all_masks(tiny_tokenizer) -> None:
    enc = encode_chat(tiny_tokenizer, CONV, loss_on="user")
    assert (
        _decode_masked(tiny_tokenizer, enc).split()
        == "what should i do about a headache ? how do i save money ?".split()
    )
    assert all(encode_chat(tiny_tokenizer, CONV, loss_on="all").mask)


def test_max_len_truncates(tiny_tokenizer) -> None:
    enc = encode_chat(tiny_tokenizer, CONV, max_len=5)
    assert len(enc.input_ids) == len(enc.mask) == 5


def test_prompt_text_ends_with_generation_prompt(tiny_tokenizer) -> None:
    assert prompt_text(tiny_tokenizer, CONV[:2]).rstrip().endswith("<assistant>")
    with pytest.raises(ChatFormatError, match="must not end with an assistant"):
        prompt_text(tiny_tokenizer, CONV[:3])


def test_missing_chat_template_is_a_clear_error(tiny_tokenizer) -> None:
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    with pytest.raises(ChatFormatError, match="has no chat template"):
        encode_chat(tok, CONV)
