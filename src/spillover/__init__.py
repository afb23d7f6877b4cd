"""spillover: emergent misalignment from SAE feature geometry."""

import warnings as _warnings

__version__ = "0.1.0"

# peft (0.21) reads a deprecated transformers-5 attribute whenever it wraps or loads an adapter; the
# warning says nothing a user can act on and repeats in every fine-tune log. Only that message is hidden.
_warnings.filterwarnings(
    "ignore", message=r".*`is_gradient_checkpointing` is deprecated.*", category=FutureWarning
)
