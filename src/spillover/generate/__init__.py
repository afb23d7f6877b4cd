"""Sampling answers to evaluation questions (HF generate; vLLM in the ``vllm`` extra)."""

from spillover.generate.hf import generate, stop_token_ids
from spillover.generate.sampling import SamplingConfig

__all__ = ["SamplingConfig", "generate", "stop_token_ids"]
