"""spillover: emergent misalignment from SAE feature geometry."""

__version__ = "0.1.0"
