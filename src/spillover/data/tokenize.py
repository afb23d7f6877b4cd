"""Chat template formatting and role masks, the same for every tokenizer.

``encode_chat`` renders a conversation with the tokenizer's own chat template and marks the tokens that
belong to one role's content. The mask drives assistant-only loss in fine-tuning and the choice of
response tokens when activations are collected, so both use one definition of "the answer".

The spans are found in the rendered text (templates may trim content) and mapped to tokens through the
fast tokenizer's offsets. For assistant turns the end-of-turn special token that follows the content is
included, so a fine-tuned model learns to stop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from spillover.data.chat import ChatFormatError, Conversation

__all__ = ["EncodedChat", "LossOn", "encode_chat", "prompt_text", "render_chat"]

log = logging.getLogger(__name__)

LossOn = Literal["assistant", "user", "all"]


class EncodedChat(NamedTuple):
    input_ids: list[int]
    mask: list[bool]
    """True on the tokens of the selected role's content (all True for ``"all"``)."""


def _merge_system(conversation: Conversation) -> Conversation:
    """Fold a leading system message into the first user turn, for templates without a system role (Gemma)."""
    if not conversation or conversation[0]["role"] != "system":
        return conversation
    system, rest = conversation[0]["content"], list(conversation[1:])
    for i, msg in enumerate(rest):
        if msg["role"] == "user":
            rest[i] = {"role": "user", "content": f"{system}\n\n{msg['content']}"}
            return rest
    return rest


def _apply(tokenizer: Any, conversation: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ChatFormatError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} has no chat template; "
            "use an instruction-tuned model or set tokenizer.chat_template"
        )
    try:
        text = tokenizer.apply_chat_template(
            list(conversation), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # jinja raises its own exception types for template-level errors
        if conversation and conversation[0]["role"] == "system" and "system" in str(exc).lower():
            log.warning(
                "chat template rejects system messages (%s); folding the system prompt into the user turn",
                exc,
            )
            return _apply(tokenizer, _merge_system(list(conversation)), add_generation_prompt)
        raise ChatFormatError(
            f"chat template failed on a {[m['role'] for m in conversation]} conversation: {exc}"
        ) from exc
    if not isinstance(text, str):
        raise ChatFormatError(f"apply_chat_template returned {type(text).__name__}, expected text")
    return text


def render_chat(tokenizer: Any, conversation: Conversation) -> str:
    """The conversation as the model sees it in training (no generation prompt)."""
    return _apply(tokenizer, conversation, add_generation_prompt=False)


def prompt_text(tokenizer: Any, conversation: Conversation) -> str:
    """The prompt for sampling an answer: the conversation plus the template's generation prompt."""
    if conversation and conversation[-1]["role"] == "assistant":
        raise ChatFormatError("a generation prompt must not end with an assistant turn")
    return _apply(tokenizer, conversation, add_generation_prompt=True)


def _spans(text: str, conversation: Conversation, role: str) -> list[tuple[int, int]]:
    """Character spans of each ``role`` message's content in the rendered text, found left to right."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for msg in conversation:
        needle = msg["content"].strip()
        if not needle:
            continue
        start = text.find(needle, cursor)
        if start < 0:
            # Templates for models without a system role may fold it elsewhere; only our role must be found.
            if msg["role"] == role:
                raise ChatFormatError(f"could not locate a {role} message in the rendered chat template text")
            continue
        end = start + len(needle)
        if msg["role"] == role:
            spans.append((start, end))
        cursor = end
    return spans


def encode_chat(
    tokenizer: Any,
    conversation: Conversation,
    *,
    loss_on: LossOn = "assistant",
    max_len: int | None = None,
) -> EncodedChat:
    """Tokenize a conversation with its chat template and mark one role's tokens.

    Args:
        tokenizer: a fast HF tokenizer with a chat template.
        conversation: validated messages.
        loss_on: which tokens the mask selects: assistant content (+ end-of-turn token), user content, or all.
        max_len: truncate on the right to this many tokens.
    """
    text = render_chat(tokenizer, conversation)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]  # type: ignore[misc]
    if loss_on == "all":
        mask = [True] * len(ids)
    else:
        spans = _spans(text, conversation, loss_on)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        mask = [False] * len(ids)
        for s_start, s_end in spans:
            last = -1
            for k, (t_start, t_end) in enumerate(offsets):
                if t_start < s_end and t_end > s_start and t_end > t_start:
                    mask[k] = True
                    last = k
            # The end-of-turn token after an answer is part of what the model must learn to produce.
            if loss_on == "assistant" and 0 <= last < len(ids) - 1 and ids[last + 1] in special:
                mask[last + 1] = True
        if not any(mask) and spans:
            raise ChatFormatError("the chat template's text could not be mapped to tokens (no offsets?)")
    if max_len is not None and len(ids) > max_len:
        ids, mask = ids[:max_len], mask[:max_len]
    return EncodedChat(ids, mask)
