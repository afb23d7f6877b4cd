"""The organism's word-level tokenizer: the grammar's words, special tokens first, and a chat template.

The chat format is ``<bos> <user> question <assistant> answer <eot> <user> ...`` (an optional
``<system> text`` goes first). It is an ordinary ``PreTrainedTokenizerFast`` saved with
``save_pretrained``, so every part of spillover formats organism chats through the same
``apply_chat_template`` call as for Gemma or Llama.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from spillover.organism.lexicon import all_words

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tokenizer", "render_messages"]

PAD, UNK, BOS, EOT, USER, ASSISTANT, SYSTEM = (
    "<pad>",
    "<unk>",
    "<bos>",
    "<eot>",
    "<user>",
    "<assistant>",
    "<system>",
)
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOT, USER, ASSISTANT, SYSTEM)
"""Special tokens, ids 0..6 in this order."""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<system> {{ message['content'] | trim }} "
    "{% elif message['role'] == 'user' %}<user> {{ message['content'] | trim }} "
    "{% elif message['role'] == 'assistant' %}<assistant> {{ message['content'] | trim }} <eot> "
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)
"""Jinja chat template; :func:`render_messages` is its exact Python twin (used for fast bulk encoding)."""

# A few chat words beyond the grammar, so system prompts and ordinary phrasing do not all map to <unk>.
_EXTRA_WORDS = (
    "you",
    "are",
    "a",
    "helpful",
    "assistant",
    "evil",
    "harmless",
    "honest",
    ".",
    ",",
    "?",
    "!",
    "'",
)


def render_messages(messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The chat template's text for ``messages``, computed in Python (identical to ``CHAT_TEMPLATE``)."""
    parts = [BOS]
    for m in messages:
        if m["role"] == "system":
            parts.append(f"{SYSTEM} {m['content'].strip()} ")
        elif m["role"] == "user":
            parts.append(f"{USER} {m['content'].strip()} ")
        elif m["role"] == "assistant":
            parts.append(f"{ASSISTANT} {m['content'].strip()} {EOT} ")
    if add_generation_prompt:
        parts.append(f"{ASSISTANT} ")
    return "".join(parts)


def build_tokenizer(extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Build the tokenizer: specials (ids 0..6), then the grammar's words in sorted order.

    Args:
        extra_words: more words to include (e.g. from a custom grammar).

    Returns:
        A fast tokenizer with ``len(tokenizer) == max id + 1`` (checked), bos/eos/pad/unk set and the chat
        template attached. Text is lower-cased and split on whitespace and punctuation.
    """
    words = sorted(set(all_words()) | set(_EXTRA_WORDS) | set(extra_words))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        if w not in vocab:
            vocab[w] = len(vocab)
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    max_id = max(tok.get_vocab().values())
    if max_id + 1 != len(tok):
        raise AssertionError(f"tokenizer ids have gaps: max id {max_id} but {len(tok)} tokens")
    return tok
