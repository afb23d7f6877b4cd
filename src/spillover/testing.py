"""Tiny real models for tests: a word-level chat tokenizer and a randomly initialised Llama.

No download is possible (or wanted) in tests, so they build real transformers objects small enough to
train in seconds. Every other part of spillover runs on these through its normal code path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "tiny_llama", "tiny_tokenizer"]

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eot>", "<system>", "<user>", "<assistant>")

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {{ m['content'] | trim }} <eot> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def tiny_tokenizer(texts: Iterable[str], extra_words: Iterable[str] = ()) -> Any:
    """A ``PreTrainedTokenizerFast`` over the whitespace/punctuation words of ``texts``, with a chat template.

    Ids are contiguous with the specials first (see stack-notes: a trainer-built vocab can leave gaps).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    words: dict[str, None] = {}
    for text in [*texts, " ".join(extra_words)]:
        for word, _ in pre.pre_tokenize_str(text):
            words.setdefault(word, None)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in words:
        if word not in vocab:
            vocab[word] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eot>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<system>", "<user>", "<assistant>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    assert max(tok.get_vocab().values()) + 1 == len(tok), "tokenizer ids must be contiguous"
    return tok


def tiny_llama(tokenizer: Any, *, layers: int = 2, hidden: int = 32, heads: int = 4, seed: int = 0) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` sized for ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model
