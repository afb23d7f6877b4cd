"""The organism's network: a small standard ``LlamaForCausalLM``, so every HF code path applies to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

__all__ = ["ModelConfig", "build_model", "llama_config"]


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the organism's transformer."""

    n_layers: int = 3
    """Decoder layers."""
    d_model: int = 64
    """Residual stream width (hidden_size). Narrow on purpose: it separated insecure code from its controls
    better than 128, and leaves features less room for directions of their own
    (measured: docs/results.md#organism-design)."""
    n_heads: int = 4
    """Attention heads (d_model must be divisible by it)."""
    d_mlp: int = 256
    """MLP width (intermediate_size)."""
    max_len: int = 160
    """Maximum sequence length (max_position_embeddings)."""
    init_std: float = 0.02
    """Initializer range."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities while the organism is pretrained and safety-tuned. A regularizer
    of the organism only: the saved model has 0, so fine-tunes and evaluations run without it. It keeps
    more fine-tunes coherent (measured: docs/results.md#organism-design)."""

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.d_model < 1 or self.d_mlp < 1 or self.max_len < 8:
            raise ValueError(f"invalid model shape: {self}")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")


def llama_config(cfg: ModelConfig, tokenizer: Any) -> LlamaConfig:
    """The ``LlamaConfig`` for ``cfg`` with the tokenizer's size and special ids (tied embeddings)."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_len,
        initializer_range=cfg.init_std,
        attention_dropout=cfg.attention_dropout,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_model(cfg: ModelConfig, tokenizer: Any, seed: int) -> LlamaForCausalLM:
    """A freshly initialised model (fp32), seeded so the same config and seed give the same weights."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(cfg, tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
