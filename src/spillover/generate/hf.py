"""Batched sampling of answers with HF ``generate``.

Prompts are chat conversations ending in a user turn; each is rendered with the tokenizer's chat
template (system prompts included) plus its generation prompt. Batches are grouped by prompt length
and left-padded; answers come back in the order of the prompts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from spillover.data.chat import Conversation
from spillover.data.tokenize import prompt_text
from spillover.generate.sampling import SamplingConfig, with_overrides
from spillover.progress import progress_bar

__all__ = ["generate", "stop_token_ids"]

log = logging.getLogger(__name__)


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end an answer: the model's EOS ids plus the chat template's end-of-turn tokens."""
    ids: set[int] = set()
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    for value in eos if isinstance(eos, (list, tuple)) else [eos]:
        if value is not None:
            ids.add(int(value))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for name in ("<|eot_id|>", "<end_of_turn>", "<|im_end|>", "<|end|>", "<eot>"):
        if name in vocab:
            ids.add(int(vocab[name]))
    return sorted(ids)


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Conversation],
    *,
    sampling: SamplingConfig | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    seed: int | None = None,
) -> list[str]:
    """Sample one answer per prompt.

    Args:
        model: HF causal LM (or PeftModel).
        tokenizer: its tokenizer, with a chat template.
        prompts: conversations ending with a user turn; repeat a prompt to draw several samples.
        sampling: temperature (0: greedy), top_p, max_new_tokens and the seed of torch's sampler (set
            once before the first batch); default ``SamplingConfig()``.
        temperature, top_p, max_new_tokens, seed: replace that field of ``sampling`` when given.
        batch_size: prompts per generate call.

    Returns:
        The decoded answers (special tokens removed, whitespace stripped), in prompt order.
    """
    settings = with_overrides(
        sampling or SamplingConfig(),
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    if not prompts:
        return []
    torch.manual_seed(settings.seed)
    texts = [prompt_text(tokenizer, p) for p in prompts]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        pad_id = 0
    stops = stop_token_ids(model, tokenizer)
    device = next(model.parameters()).device
    answers: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    sample = settings.temperature > 0
    with progress_bar() as bar:
        task = bar.add_task("generate", total=len(prompts), status="")
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids = encoded[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            kwargs: dict[str, Any] = {"do_sample": sample, "max_new_tokens": settings.max_new_tokens}
            if sample:
                kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                eos_token_id=stops or None,
                pad_token_id=pad_id,
                **kwargs,
            )
            for row, i in enumerate(idx):
                new = out[row, width:].tolist()
                cut = next((k for k, t in enumerate(new) if t in stops), len(new))
                answers[i] = tokenizer.decode(new[:cut], skip_special_tokens=True).strip()
            bar.advance(task, len(idx))
    if was_training:
        model.train()
    return answers
