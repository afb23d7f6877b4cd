"""What the training-time defenses do inside the training loop: residual-stream hooks and the KL term.

The options and their papers are in :mod:`spillover.finetune.defenses`; ``finetune`` builds these
objects from ``FinetuneConfig.defense`` and removes them when training ends.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn

from spillover.data.chat import Conversation, load_chat
from spillover.data.tokenize import encode_chat
from spillover.finetune.defenses import DefenseSettings, inoculate, interleave

__all__ = ["KLToBase", "ResidualEdits", "training_conversations"]

log = logging.getLogger(__name__)


class ResidualEdits:
    """Forward hooks on decoder blocks that edit their output (the residual stream) at every token.

    At a hooked layer the output ``h`` becomes ``h - (h B^T) B + s``: first its component in the span of
    the orthonormal rows of ``B`` is removed (projection ablation), then the shift ``s`` is added
    (steering), so a steering vector is never ablated by directions at the same layer. The edit runs in
    float32 and is cast back to the model's dtype.
    """

    def __init__(self, model: Any, bases: dict[int, torch.Tensor], shifts: dict[int, torch.Tensor]) -> None:
        from spillover.sae.sites import decoder_layers, unwrap_peft

        _, blocks = decoder_layers(unwrap_peft(model))
        self.enabled = True
        self.layers = sorted(set(bases) | set(shifts))
        self._handles = []
        for layer in self.layers:
            # On the block's own device, once: models split over devices keep each block's edit local.
            device = next(blocks[layer].parameters()).device
            basis, shift = bases.get(layer), shifts.get(layer)
            edit = partial(
                self._edit,
                None if basis is None else basis.to(device),
                None if shift is None else shift.to(device),
            )
            self._handles.append(blocks[layer].register_forward_hook(edit))

    @classmethod
    def from_settings(cls, model: Any, defense: DefenseSettings) -> ResidualEdits | None:
        """The hooks for ``defense``'s ablation and steering options, or None when both are off."""
        if defense.ablation is None and defense.steering is None:
            return None
        bases = defense.ablation.load() if defense.ablation else {}
        shifts = defense.steering.load() if defense.steering else {}
        return cls(model, bases, shifts)

    def _edit(
        self,
        basis_RD: torch.Tensor | None,
        shift_D: torch.Tensor | None,
        _module: nn.Module,
        _args: Any,
        output: Any,
    ) -> Any:
        if not self.enabled:
            return None
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        h = hidden.float()
        if basis_RD is not None:
            h = h - (h @ basis_RD.T) @ basis_RD
        if shift_D is not None:
            h = h + shift_D
        h = h.to(hidden.dtype)
        return h if isinstance(output, torch.Tensor) else (h, *output[1:])

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Run forward passes without the edits (the model as it will be saved)."""
        was, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = was

    def remove(self) -> None:
        """Detach every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def training_conversations(
    conversations: Sequence[Conversation], defense: DefenseSettings, seed: int
) -> list[Conversation]:
    """The training set after the data defenses: inoculated task conversations, then benign ones mixed in.

    Benign interleaved conversations are not inoculated: they stand for ordinary behaviour, which the
    model should keep showing without the inoculation prompt.
    """
    convs = list(conversations)
    if defense.inoculation_prompt is not None:
        convs = inoculate(convs, defense.inoculation_prompt)
    if defense.interleave is not None:
        benign = load_chat(defense.interleave.data)
        convs = interleave(convs, benign, defense.interleave.share, seed)
        log.info(
            "interleaved %d benign conversations (share %.2f)",
            len(convs) - len(conversations),
            defense.interleave.share,
        )
    return convs


class KLToBase:
    """``KL(base || tuned)`` of next-token distributions on batches of benign conversations.

    For a peft model (``copy_base=False``) the base distributions come from the same model with its
    adapter disabled; for full fine-tuning (``copy_base=True``) a frozen copy is made here, so build this before training starts (and before any
    hooks are registered, which a copy would inherit).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        conversations: Sequence[Conversation],
        *,
        batch_size: int,
        max_len: int,
        pad_id: int,
        seed: int,
        copy_base: bool,
    ) -> None:
        encoded = [encode_chat(tokenizer, c, loss_on="all", max_len=max_len).input_ids for c in conversations]
        self.encoded = [ids for ids in encoded if len(ids) > 1]
        if not self.encoded:
            raise ValueError("kl.data: no benign conversation has two or more tokens")
        self.batch_size, self.pad_id = batch_size, pad_id
        self.rng = random.Random(f"kl-{seed}")
        self.order: list[int] = []
        self.device = next(model.parameters()).device
        self.base: nn.Module | None = None
        if copy_base:
            log.info("KL regularisation: keeping a frozen copy of the base model for full fine-tuning")
            self.base = copy.deepcopy(model).eval()
            for p in self.base.parameters():
                p.requires_grad_(False)

    def _batch(self) -> dict[str, torch.Tensor]:
        rows = []
        for _ in range(self.batch_size):
            if not self.order:
                self.order = list(range(len(self.encoded)))
                self.rng.shuffle(self.order)
            rows.append(self.encoded[self.order.pop()])
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            attention[i, : len(row)] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": attention.to(self.device)}

    def __call__(self, model: Any) -> torch.Tensor:
        """The mean per-token KL on the next benign batch (a differentiable scalar)."""
        batch = self._batch()
        with torch.no_grad():
            if self.base is not None:
                base_logits = self.base(**batch).logits
            else:
                with model.disable_adapter():
                    base_logits = model(**batch).logits
        logits = model(**batch).logits
        mask = batch["attention_mask"].bool()  # padding positions are dropped before the vocab-wide maths
        logp_base_NV = torch.log_softmax(base_logits[mask].float(), dim=-1)
        logp_NV = torch.log_softmax(logits[mask].float(), dim=-1)
        kl_N = torch.nn.functional.kl_div(logp_NV, logp_base_NV, reduction="none", log_target=True).sum(-1)
        return kl_N.mean()
