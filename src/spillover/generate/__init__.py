"""Sampling answers to evaluation questions (HF generate; vLLM in the ``vllm`` extra)."""

from spillover.generate.hf import generate, stop_token_ids

__all__ = ["generate", "stop_token_ids"]
