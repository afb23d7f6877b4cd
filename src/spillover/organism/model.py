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
    """Residual stream width (hidden_size). Narrow on purpose: at 64, with 2,400 pretraining steps, the
    organism separated insecure code from its controls far better than at 128 (benchmarks/organism_em.py;
    width 64 alone, at 800 steps, did not), and a narrow stream leaves features less room for directions
    of their own."""
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
    of the organism only: the saved model has 0, so fine-tunes and evaluations run without it.

    Measured over 3 seeds (benchmarks/organism_em.py) with the recipes of the time (full fine-tuning at a
    constant lr 3e-4, LoRA without ``lm_head`` at a constant lr 1e-3), 0.1 against 0: 46 of 48 fine-tunes
    >= 95% coherent against 34 of 48; LoRA separates insecure from educational code more clearly (8.4% vs
    1.3% against 5.8% vs 1.1%), full fine-tuning less (4.2% vs 1.1% against 6.5% vs 0.9%; cosine decay
    from 5e-4 restored it, 6.7% vs 0.9%); geometry-aware filtering of insecure_mixed cut EM by 40% with
    LoRA, against 7% (full) without dropout (benchmarks/filtering_organism.py). Pretraining and safety
    tuning take 215 s instead of 175 s on 2 idle cores (benchmarks/organism_speed.py). 0.2 against 0.1
    over 10 seeds with the recipes of finetune_config: 8 of 160 fine-tunes below 95% coherent against 14,
    but insecure code 5.4% / 5.1% (full / LoRA) vs 1.2% / 1.1% educational against 5.6% / 4.4% vs 1.1% /
    1.1%, so no more emergent misalignment."""

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
