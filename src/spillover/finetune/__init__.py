"""Fine-tuning (LoRA via peft, or full) with assistant-only loss."""

from spillover.finetune.core import (
    FinetuneConfig,
    FinetuneResult,
    LoraSettings,
    finetune,
    load_adapter,
    set_seed,
)

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "LoraSettings",
    "finetune",
    "load_adapter",
    "set_seed",
]
