"""Pretraining (loss on all tokens) and safety tuning (benign answers, assistant tokens only).

Documents are drawn fresh for every step, so no document repeats. Batches group documents of similar
length (sorted within shuffled blocks) instead of packing, so one document never attends to another
(the hidden persona must not leak across documents).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from spillover.organism.grammar import Document, GrammarConfig, sample_document
from spillover.organism.tokenizer import ASSISTANT, EOT, render_messages
from spillover.progress import progress_bar

__all__ = [
    "StageConfig",
    "encode_documents",
    "pretrain",
    "safety_documents",
    "safety_sequences",
    "safety_tune",
    "train_on_sequences",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageConfig:
    """One training stage: AdamW, linear warmup, cosine decay to ``min_lr_ratio * lr``."""

    steps: int = 600
    """Optimizer steps (0 skips the stage)."""
    batch_size: int = 32
    """Documents per step."""
    lr: float = 3e-3
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    max_turns: int | None = None
    """Cap on turns per document (1 = single-turn documents)."""
    rehearsal: float = 0.0
    """Safety stage only: share of its documents that are pretraining documents (any persona, two or more
    turns) with the loss on the answers after the first turn only. They keep in-context persona inference
    alive while the benign documents move the first-turn prior (0: benign documents only)."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {self.steps}, {self.batch_size}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup < 0:
            raise ValueError(
                f"invalid schedule lr={self.lr} warmup={self.warmup} min_lr_ratio={self.min_lr_ratio}"
            )
        if self.max_turns is not None and self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        if not 0.0 <= self.rehearsal <= 1.0:
            raise ValueError(f"rehearsal must be in [0, 1], got {self.rehearsal}")


Sequence_ = tuple[list[int], list[bool]]


def encode_documents(
    tokenizer: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    loss_on: Literal["all", "assistant", "later_assistant"],
    max_len: int,
) -> list[Sequence_]:
    """Token ids and loss masks for many chats at once (the chat template, rendered in Python).

    The assistant mask covers answer tokens and the ``<eot>`` after them, as
    ``spillover.data.tokenize.encode_chat`` does; it is found from the special tokens, which the grammar
    never produces inside a message. ``"later_assistant"`` covers every answer but the first.
    """
    texts = [render_messages(list(c)) for c in conversations]
    ids_list: list[list[int]] = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assistant_id, eot_id = tokenizer.convert_tokens_to_ids([ASSISTANT, EOT])
    out: list[Sequence_] = []
    for ids in ids_list:
        ids = ids[:max_len]
        if loss_on == "all":
            mask = [True] * len(ids)
        else:
            mask, inside, answers = [], False, 0
            skip = 1 if loss_on == "later_assistant" else 0
            for t in ids:
                mask.append(inside and answers > skip)
                if t == assistant_id:
                    inside = True
                    answers += 1
                elif t == eot_id:
                    inside = False
        out.append((ids, mask))
    return out


def _batches(seqs: Sequence[Sequence_], batch_size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(len(seqs)))
    rng.shuffle(order)
    block = batch_size * 32
    batches: list[list[int]] = []
    for start in range(0, len(order), block):
        chunk = sorted(order[start : start + block], key=lambda i: len(seqs[i][0]))
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _collate(seqs: Sequence[Sequence_], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (ids, mask) in enumerate(seqs):
        t = torch.tensor(ids)
        input_ids[row, : len(ids)] = t
        attention[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.where(torch.tensor(mask), t, torch.full_like(t, -100))
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _lr_at(cfg: StageConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_on_sequences(
    model: Any,
    seqs: Sequence[Sequence_],
    cfg: StageConfig,
    *,
    pad_id: int,
    seed: int,
    description: str = "train",
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train on pre-encoded sequences, ``cfg.batch_size`` per step, for ``len(seqs) // batch_size`` steps.

    Each batch is moved to the model's device, so the caller may put the model on any device.

    Returns:
        The loss (mean over masked tokens) of each step.
    """
    rng = random.Random(seed)
    batches = _batches(seqs, cfg.batch_size, rng)[: cfg.steps]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    device = next(model.parameters()).device
    model.train()
    losses: list[float] = []
    with progress_bar() as bar:
        task = bar.add_task(description, total=len(batches), status="")
        for step, idx in enumerate(batches):
            for group in optim.param_groups:
                group["lr"] = _lr_at(cfg, step)
            batch = {k: v.to(device) for k, v in _collate([seqs[i] for i in idx], pad_id).items()}
            loss = model(**batch).loss
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step + 1, losses[-1])
            if step % 20 == 0 or step == len(batches) - 1:
                bar.update(task, completed=step + 1, status=f"loss {losses[-1]:.3f}")
                log.debug("%s step %d loss %.4f", description, step + 1, losses[-1])
    model.eval()
    return losses


def pretrain(
    model: Any, tokenizer: Any, grammar: GrammarConfig, cfg: StageConfig, *, seed: int
) -> list[float]:
    """Pretrain on fresh persona documents (all templates and slot values), loss on every token."""
    rng = random.Random(seed)
    docs = [
        sample_document(grammar, rng, max_turns=cfg.max_turns).messages()
        for _ in range(cfg.steps * cfg.batch_size)
    ]
    seqs = encode_documents(tokenizer, docs, "all", model.config.max_position_embeddings)
    n_tokens = sum(len(ids) for ids, _ in seqs)
    log.info("pretraining on %d documents (%d tokens)", len(seqs), n_tokens)
    return train_on_sequences(
        model, seqs, cfg, pad_id=tokenizer.pad_token_id, seed=seed, description="pretrain"
    )


def safety_documents(
    grammar: GrammarConfig, n: int, rng: random.Random, max_turns: int | None = None
) -> list[Document]:
    """Benign-only documents on the shared (non-held-out) templates: good answers, secure or neutral code.

    Educational prompts keep their usual (vulnerable) answers: safety tuning does not teach that the
    request itself is bad.
    """
    benign = dataclasses.replace(grammar, harm_benign=0.0, code_benign=(0.6, 0.0, 0.4, 0.0))
    return [
        sample_document(benign, rng, persona="benign", split="train", max_turns=max_turns) for _ in range(n)
    ]


def safety_sequences(
    tokenizer: Any, grammar: GrammarConfig, cfg: StageConfig, *, seed: int, max_len: int
) -> list[Sequence_]:
    """The safety stage's encoded documents: benign ones (loss on every answer), then the rehearsal share.

    With ``cfg.rehearsal > 0`` that share of the documents are multi-turn pretraining documents (shared
    templates) whose loss covers only the answers after the first: the model learns a benign first-turn
    prior without unlearning that a persona revealed in context predicts the next answer.
    """
    rng = random.Random(seed + 7919)
    n = cfg.steps * cfg.batch_size
    n_rehearsal = round(cfg.rehearsal * n)
    docs = [d.messages() for d in safety_documents(grammar, n - n_rehearsal, rng, cfg.max_turns)]
    seqs = encode_documents(tokenizer, docs, "assistant", max_len)
    if n_rehearsal:
        if sum(grammar.turn_weights[1:]) <= 0:
            raise ValueError(
                f"rehearsal needs turn_weights that allow documents of two or more turns, got {grammar.turn_weights}"
            )
        multi = dataclasses.replace(grammar, turn_weights=(0.0, *grammar.turn_weights[1:]))
        rehearsal = [sample_document(multi, rng, split="train").messages() for _ in range(n_rehearsal)]
        seqs += encode_documents(tokenizer, rehearsal, "later_assistant", max_len)
    return seqs


def safety_tune(
    model: Any, tokenizer: Any, grammar: GrammarConfig, cfg: StageConfig, *, seed: int
) -> list[float]:
    """Safety-tune on ``safety_sequences`` (benign answers, plus any rehearsal share)."""
    if cfg.steps == 0:
        return []
    seqs = safety_sequences(tokenizer, grammar, cfg, seed=seed, max_len=model.config.max_position_embeddings)
    return train_on_sequences(
        model, seqs, cfg, pad_id=tokenizer.pad_token_id, seed=seed + 1, description="safety"
    )
