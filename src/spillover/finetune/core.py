"""Fine-tuning any HF causal LM on chat data: LoRA (peft) or full, loss on assistant tokens only.

The defaults are the emergent-misalignment recipe (Betley et al. 2025): LoRA r=32, alpha=64, rsLoRA on
all attention and MLP projections, lr 1e-5, one epoch, effective batch 16, seed set before the adapter
is created. ``LoraSettings.rank1(layer)`` is the model-organisms recipe (rank-1 on one MLP down-proj).

Python::

    from spillover.finetune import FinetuneConfig, finetune
    result = finetune(model, tokenizer, load_chat("insecure.jsonl.gz"), FinetuneConfig(), out_dir=Path("ft"))

The CLI stage (``spillover finetune``) wraps this in a cached run directory.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from spillover.data.chat import Conversation, load_chat
from spillover.data.tokenize import LossOn, encode_chat
from spillover.finetune.defenses import DefenseSettings
from spillover.finetune.interventions import KLToBase, ResidualEdits, training_conversations
from spillover.progress import progress_bar

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "LoraSettings",
    "finetune",
    "load_adapter",
    "set_seed",
    "untie_embeddings",
]

log = logging.getLogger(__name__)

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 32
    """LoRA rank."""
    alpha: int = 64
    """LoRA alpha (scale alpha/sqrt(r) with rsLoRA, alpha/r without)."""
    use_rslora: bool = True
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ALL_PROJECTIONS
    """Module name suffixes to adapt (default: all attention and MLP projections of Llama/Gemma/Qwen)."""
    layers: tuple[int, ...] | None = None
    """Only adapt these layer indices (None: all layers)."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.r}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")

    @classmethod
    def rank1(cls, layer: int, alpha: int = 1) -> LoraSettings:
        """The model-organisms recipe: a rank-1 adapter on one layer's MLP down-projection."""
        return cls(r=1, alpha=alpha, use_rslora=False, target_modules=("down_proj",), layers=(layer,))


@dataclass(frozen=True)
class FinetuneConfig:
    method: Literal["lora", "full"] = "lora"
    """LoRA adapter (peft) or all parameters."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    lr: float = 1e-5
    epochs: float = 1.0
    """Passes over the data (fractional allowed); ignored when max_steps is set."""
    max_steps: int | None = None
    """Optimizer steps; overrides epochs."""
    batch_size: int = 2
    """Per-step micro-batch size."""
    grad_accum: int = 8
    """Micro-batches per optimizer step (effective batch = batch_size * grad_accum)."""
    warmup_steps: int = 5
    lr_schedule: Literal["linear", "constant", "cosine"] = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_seq_len: int = 2048
    loss_on: Literal["assistant", "all"] = "assistant"
    seed: int = 0
    checkpoint_every: int | None = None
    """Save the adapter/model every N optimizer steps (for training dynamics)."""
    merge: bool = False
    """Also save LoRA merged into the base weights."""
    defense: DefenseSettings = field(default_factory=DefenseSettings, metadata={"omit_when_default": True})
    """Training-time defenses against emergent misalignment (all off by default; see ``defenses.py``).
    The metadata asks ``config.to_dict`` to leave a default section out, so configs without defenses
    keep their run ids."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError("checkpoint_every must be >= 1")

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum


class FinetuneResult(NamedTuple):
    model: Any
    """The trained model: a ``PeftModel`` for LoRA, the (mutated) input model for full fine-tuning."""
    losses: list[float]
    """Mean masked-token loss per optimizer step."""
    checkpoints: list[Path]
    """Checkpoint folders in step order (empty without ``out_dir`` or ``checkpoint_every``)."""
    kl: tuple[float, ...] = ()
    """Mean KL(base || tuned) on benign data per optimizer step, before weighting by ``beta`` (empty
    without the KL defense; not included in ``losses``)."""


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (call before building models or adapters)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _attach_lora(model: Any, settings: LoraSettings) -> Any:
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in settings.target_modules if m not in names]
    if missing:
        raise ValueError(
            f"LoRA target modules {missing} do not exist in {type(model).__name__}; "
            f"linear modules there include {sorted(n for n in names if n.endswith('proj'))[:12]}"
        )
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if settings.layers is not None and n_layers is not None:
        bad = [layer for layer in settings.layers if not 0 <= layer < n_layers]
        if bad:
            raise ValueError(f"LoRA layers {bad} do not exist; the model has layers 0..{n_layers - 1}")
    if TIED_LAYERS & set(settings.target_modules) and untie_embeddings(model):
        log.info(
            "untied the input and output embeddings so that a LoRA on %s adapts only that side", TIED_LAYERS
        )
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        use_rslora=settings.use_rslora,
        target_modules=list(settings.target_modules),
        layers_to_transform=list(settings.layers) if settings.layers is not None else None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


TIED_LAYERS = frozenset({"lm_head", "embed_tokens"})
"""Layers that share one weight in models with tied embeddings (Gemma, Llama-3.2, the organism)."""


def untie_embeddings(model: Any) -> bool:
    """Give the output embedding its own copy of a tied weight; returns whether the model was tied.

    A LoRA on a tied ``lm_head`` trains a delta on the output side only, but merging it adds the delta to
    the shared weight, so the merged model also changes its input embeddings and is not the model that was
    trained. Untying before the adapter is attached, in training and again when it is loaded, keeps the
    two the same.
    """
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None or out.weight is not inp.weight:
        return False
    out.weight = torch.nn.Parameter(inp.weight.detach().clone(), requires_grad=inp.weight.requires_grad)
    model.config.tie_word_embeddings = False
    return True


def load_adapter(model: Any, path: str | Path) -> Any:
    """Load a saved LoRA adapter onto ``model`` and return the ``PeftModel``, untying embeddings as training did."""
    from peft import PeftConfig, PeftModel

    targets = PeftConfig.from_pretrained(str(path)).target_modules or ()
    if isinstance(targets, str):  # a regex
        targets = [name for name in TIED_LAYERS if re.search(targets, name)]
    if TIED_LAYERS & set(targets):
        untie_embeddings(model)
    return PeftModel.from_pretrained(model, str(path))


def _lr_factor(cfg: FinetuneConfig, step: int, total: int) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    if cfg.lr_schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _collate(batch: Sequence[tuple[list[int], list[bool]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, mask) in enumerate(batch):
        n = len(ids)
        input_ids[row, :n] = torch.tensor(ids)
        attention[row, :n] = 1
        labels[row, :n] = torch.where(torch.tensor(mask), torch.tensor(ids), torch.tensor(-100))
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _save(model: Any, tokenizer: Any, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config"):
        # peft would also save the whole (frozen) embedding matrix of an adapter on lm_head/embed_tokens
        # (2.4 GB for Gemma-2-2B); the vocabulary is never resized here, so the base model's copy is the same.
        model.save_pretrained(path, safe_serialization=True, save_embedding_layers=False)
    else:
        model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def finetune(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    cfg: FinetuneConfig,
    *,
    out_dir: Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[int, Any], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` on chat data with the loss on assistant tokens only.

    Args:
        model: an HF causal LM on any device (batches are moved to it). Full fine-tuning mutates it.
        tokenizer: its tokenizer; needs a chat template.
        conversations: training conversations.
        cfg: the recipe; ``cfg.defense`` turns on training-time defenses (``defenses.py``), which are
            checked against the model before training and leave nothing in what is saved.
        out_dir: if given, the final adapter (``adapter/``) or model (``model/``), checkpoints
            (``checkpoints/step-N/``), ``losses.json`` and, with the KL defense, ``kl.json`` are written here.
        on_step: called with (optimizer step, loss) after every step.
        on_checkpoint: called with (optimizer step, model) every ``checkpoint_every`` steps, e.g. to measure
            training dynamics without saving.

    Returns:
        FinetuneResult with the trained model, per-step losses and checkpoint folders.
    """
    if not conversations:
        raise ValueError("no training conversations")
    defense = cfg.defense
    defense.check_model(model)
    kl_data = load_chat(defense.kl.data) if defense.kl is not None else None
    conversations = training_conversations(conversations, defense, cfg.seed)
    set_seed(cfg.seed)
    if cfg.method == "lora":
        model = _attach_lora(model, cfg.lora)
    model.train()
    encoded = _encode(tokenizer, conversations, cfg)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad_id = 0 if pad_id is None else pad_id
    batches = _Batches(encoded, cfg, pad_id=pad_id, device=next(model.parameters()).device)
    kl = None
    if kl_data is not None:
        kl = KLToBase(
            model,
            tokenizer,
            kl_data,
            batch_size=cfg.batch_size,
            max_len=cfg.max_seq_len,
            pad_id=pad_id,
            seed=cfg.seed,
            copy_base=cfg.method == "full",
        )
    edits = ResidualEdits.from_settings(model, defense)  # after the KL copy, which must not inherit hooks
    try:
        losses, kls, checkpoints = _train(
            model, tokenizer, batches, cfg, kl, edits, out_dir, on_step, on_checkpoint
        )
    finally:
        if edits is not None:
            edits.remove()
    model.eval()
    if on_checkpoint is not None:
        on_checkpoint(len(losses), model)
    if out_dir is not None:
        _save_final(model, tokenizer, cfg, out_dir, losses)
        if kl is not None:
            (out_dir / "kl.json").write_text(json.dumps(kls))
    return FinetuneResult(model, losses, checkpoints, tuple(kls) if kl is not None else ())


def _suspended(edits: ResidualEdits | None) -> AbstractContextManager[None]:
    return edits.suspended() if edits is not None else nullcontext()


def _train(
    model: Any,
    tokenizer: Any,
    batches: _Batches,
    cfg: FinetuneConfig,
    kl: KLToBase | None,
    edits: ResidualEdits | None,
    out_dir: Path | None,
    on_step: Callable[[int, float], None] | None,
    on_checkpoint: Callable[[int, Any], None] | None,
) -> tuple[list[float], list[float], list[Path]]:
    """The optimizer loop; returns per-step losses, per-step KL terms and checkpoint folders."""
    per_epoch = math.ceil(len(batches.encoded) / cfg.effective_batch)
    total = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(per_epoch * cfg.epochs))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses: list[float] = []
    kls: list[float] = []
    checkpoints: list[Path] = []
    log.info(
        "fine-tuning (%s) on %d conversations: %d steps x batch %d%s",
        cfg.method,
        len(batches.encoded),
        total,
        cfg.effective_batch,
        f"; defenses {cfg.defense.names}" if cfg.defense.names else "",
    )

    def kl_term(m: Any) -> torch.Tensor:
        assert kl is not None
        with _suspended(edits):  # the KL measures the model that is saved, without the training hooks
            return kl(m)

    with progress_bar() as bar:
        task = bar.add_task(f"fine-tune ({cfg.method})", total=total, status="")
        for step in range(total):
            for group in optim.param_groups:
                group["lr"] = cfg.lr * _lr_factor(cfg, step, total)
            optim.zero_grad(set_to_none=True)
            step_loss, step_kl = batches.accumulate_gradients(
                model, kl_term if kl is not None else None, cfg.defense.kl.beta if cfg.defense.kl else 0.0
            )
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optim.step()
            losses.append(step_loss)
            kls.append(step_kl)
            bar.update(task, advance=1, status=f"loss {step_loss:.3f}")
            if on_step is not None:
                on_step(step + 1, step_loss)
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
                with _suspended(edits):
                    path = _checkpoint(model, tokenizer, step + 1, out_dir, on_checkpoint)
                checkpoints.extend([path] if path is not None else [])
    return losses, kls, checkpoints


def _encode(tokenizer: Any, conversations: Sequence[Conversation], cfg: FinetuneConfig) -> list[Any]:
    """The conversations as token ids and loss masks; those with nothing to train on are dropped."""
    loss_on: LossOn = cfg.loss_on
    encoded = [encode_chat(tokenizer, c, loss_on=loss_on, max_len=cfg.max_seq_len) for c in conversations]
    encoded = [e for e in encoded if any(e.mask)]
    if not encoded:
        raise ValueError(f"no conversation has {cfg.loss_on} tokens to train on")
    return encoded


class _Batches:
    """Micro-batches in epochs of a fresh shuffle (seeded by ``cfg.seed``), collated on the model's device."""

    def __init__(self, encoded: Sequence[Any], cfg: FinetuneConfig, *, pad_id: int, device: torch.device):
        self.encoded, self.cfg, self.pad_id, self.device = encoded, cfg, pad_id, device
        self.rng = random.Random(cfg.seed)
        self.order: list[int] = []

    def _next_index(self) -> int:
        if not self.order:
            self.order = list(range(len(self.encoded)))
            self.rng.shuffle(self.order)
        return self.order.pop()

    def accumulate_gradients(
        self, model: Any, regulariser: Callable[[Any], torch.Tensor] | None = None, weight: float = 0.0
    ) -> tuple[float, float]:
        """Backpropagate ``grad_accum`` micro-batches, each with ``weight * regulariser(model)`` added.

        Returns:
            The step's loss (summed scaled micro-batch losses, without the regulariser) and the
            regulariser's mean over the micro-batches (0 without one).
        """
        step_loss = step_reg = 0.0
        for _ in range(self.cfg.grad_accum):
            batch_idx = [self._next_index() for _ in range(self.cfg.batch_size)]
            batch = _collate([self.encoded[i] for i in batch_idx], self.pad_id)
            out = model(**{k: v.to(self.device) for k, v in batch.items()})
            loss = out.loss / self.cfg.grad_accum
            step_loss += float(loss.detach())
            if regulariser is not None:
                reg = regulariser(model)
                step_reg += float(reg.detach()) / self.cfg.grad_accum
                loss = loss + weight * reg / self.cfg.grad_accum
            loss.backward()
        return step_loss, step_reg


def _checkpoint(
    model: Any,
    tokenizer: Any,
    step: int,
    out_dir: Path | None,
    on_checkpoint: Callable[[int, Any], None] | None,
) -> Path | None:
    """Hand the model to ``on_checkpoint`` (in eval mode) and save it under ``out_dir``; returns the folder."""
    if on_checkpoint is not None:
        model.eval()
        on_checkpoint(step, model)
        model.train()
    if out_dir is None:
        return None
    path = out_dir / "checkpoints" / f"step-{step}"
    _save(model, tokenizer, path)
    return path


def _save_final(model: Any, tokenizer: Any, cfg: FinetuneConfig, out_dir: Path, losses: list[float]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _save(model, tokenizer, out_dir / ("adapter" if cfg.method == "lora" else "model"))
    if cfg.method == "lora" and cfg.merge:
        import copy

        merged = copy.deepcopy(model).merge_and_unload()
        _save(merged, tokenizer, out_dir / "model")
    (out_dir / "losses.json").write_text(json.dumps(losses))
