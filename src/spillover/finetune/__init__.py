"""Fine-tuning (LoRA via peft, or full) with assistant-only loss, and training-time EM defenses."""

from spillover.finetune.core import (
    FinetuneConfig,
    FinetuneResult,
    LoraSettings,
    finetune,
    load_adapter,
    set_seed,
)
from spillover.finetune.defenses import (
    BenignInterleave,
    CheckpointChoice,
    DefenseSettings,
    KLRegularisation,
    PreventativeSteering,
    ProjectionAblation,
    checkpoint_candidates,
    inoculate,
    interleave,
    load_layer_tensors,
    save_layer_tensors,
    select_checkpoint,
)

__all__ = [
    "BenignInterleave",
    "CheckpointChoice",
    "DefenseSettings",
    "FinetuneConfig",
    "FinetuneResult",
    "KLRegularisation",
    "LoraSettings",
    "PreventativeSteering",
    "ProjectionAblation",
    "checkpoint_candidates",
    "finetune",
    "inoculate",
    "interleave",
    "load_adapter",
    "load_layer_tensors",
    "save_layer_tensors",
    "select_checkpoint",
    "set_seed",
]
