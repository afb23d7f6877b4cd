"""Sampling with vLLM (the ``vllm`` extra, GPU machines): many LoRA adapters of one base model, one engine.

One ``vllm.LLM`` engine holds the base model; every fine-tuned adapter is a ``LoRARequest`` on the same
engine, so a sweep of many adapters samples all its answers in one batched call instead of loading a
model per adapter. Prompts are rendered with the tokenizer's chat template exactly as the HF backend
does (system prompts honoured) and passed as token ids, so the two backends see identical prompts.
Every prompt gets its own sampling seed (``seed + index``), so results do not depend on batching.

Python (on a GPU machine with ``pip install 'spillover[vllm]'``)::

    gen = VLLMGenerator("meta-llama/Llama-3.1-8B-Instruct", {"insecure": "runs/finetune/abc/adapter"})
    answers = gen.generate_many({"insecure": prompts, None: prompts}, sampling=SamplingConfig())

The vLLM API used: ``LLM(model, enable_lora=True, max_loras, max_lora_rank, seed, dtype, ...)``,
``SamplingParams(n=1, temperature, top_p, max_tokens, seed, stop_token_ids)``,
``LoRARequest(lora_name, lora_int_id, lora_path)`` and ``LLM.generate(prompts, params, lora_request=[...])``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spillover.data.chat import Conversation
from spillover.data.tokenize import prompt_text
from spillover.generate.hf import stop_token_ids
from spillover.generate.sampling import SamplingConfig, with_overrides

__all__ = ["VLLMGenerator", "VLLMSettings", "adapter_rank", "import_vllm"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VLLMSettings:
    gpu_memory_utilization: float = 0.9
    """Share of GPU memory vLLM may take (weights + KV cache)."""
    tensor_parallel_size: int = 1
    max_loras: int = 4
    """Adapters resident on the GPU at once (others wait their turn)."""
    max_lora_rank: int | None = None
    """None: the largest rank among the adapters (vLLM rounds up to a supported size)."""
    max_model_len: int | None = None
    enforce_eager: bool = False
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_loras < 1 or self.tensor_parallel_size < 1:
            raise ValueError("max_loras and tensor_parallel_size must be >= 1")


def import_vllm() -> tuple[Any, Any, Any]:
    """``(LLM, SamplingParams, LoRARequest)`` from vllm, or a clear error naming the extra to install."""
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError as exc:
        raise ImportError(
            "generate.backend=vllm needs vLLM: pip install 'spillover[vllm]' on a CUDA machine "
            "(or use generate.backend=hf)"
        ) from exc
    return LLM, SamplingParams, LoRARequest


_SUPPORTED_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def adapter_rank(path: str | Path) -> int:
    """The largest LoRA rank in a peft adapter folder (``r`` and any ``rank_pattern`` entry)."""
    cfg_path = Path(path) / "adapter_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path} is not a peft adapter folder (no adapter_config.json)")
    cfg = json.loads(cfg_path.read_text())
    ranks = [int(cfg.get("r", 8)), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())]
    return max(ranks)


def _round_rank(rank: int) -> int:
    """vLLM accepts only some max_lora_rank values; take the smallest one that fits."""
    for r in _SUPPORTED_RANKS:
        if rank <= r:
            return r
    raise ValueError(
        f"LoRA rank {rank} exceeds vLLM's largest supported max_lora_rank {_SUPPORTED_RANKS[-1]}"
    )


class VLLMGenerator:
    """One vLLM engine for a base model and any number of its LoRA adapters.

    Args:
        base_model: hub id or local folder of the base model.
        adapters: adapter name -> peft adapter folder.
        settings: engine settings.
        seed: engine seed (per-prompt seeds are set in :meth:`generate_many`).
        llm: an existing engine (tests pass a fake); built from the arguments otherwise.
        vllm_classes: ``(LLM, SamplingParams, LoRARequest)`` to use instead of importing vllm (tests).
    """

    def __init__(
        self,
        base_model: str,
        adapters: Mapping[str, str | Path] | None = None,
        settings: VLLMSettings | None = None,
        *,
        seed: int = 0,
        llm: Any = None,
        vllm_classes: tuple[Any, Any, Any] | None = None,
    ) -> None:
        self.settings = settings or VLLMSettings()
        self.adapters = {name: Path(p) for name, p in (adapters or {}).items()}
        for name, path in self.adapters.items():
            if not (path / "adapter_config.json").is_file():
                raise FileNotFoundError(f"adapter {name!r}: {path} is not a peft adapter folder")
        llm_cls, self._sampling_cls, lora_cls = vllm_classes or import_vllm()
        self._requests = {
            name: lora_cls(name, i + 1, str(path))
            for i, (name, path) in enumerate(sorted(self.adapters.items()))
        }
        if llm is None:
            kwargs: dict[str, Any] = {
                "seed": seed,
                "dtype": self.settings.dtype,
                "gpu_memory_utilization": self.settings.gpu_memory_utilization,
                "tensor_parallel_size": self.settings.tensor_parallel_size,
                "enforce_eager": self.settings.enforce_eager,
            }
            if self.settings.max_model_len is not None:
                kwargs["max_model_len"] = self.settings.max_model_len
            if self.adapters:
                rank = self.settings.max_lora_rank or max(adapter_rank(p) for p in self.adapters.values())
                kwargs.update(
                    enable_lora=True,
                    max_loras=min(self.settings.max_loras, len(self.adapters)),
                    max_lora_rank=_round_rank(rank),
                )
            log.info("starting vLLM for %s with %d adapter(s)", base_model, len(self.adapters))
            llm = llm_cls(model=base_model, **kwargs)
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()

    def _params(self, sampling: SamplingConfig, seed: int) -> Any:
        return self._sampling_cls(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            seed=seed,
            stop_token_ids=stop_token_ids(None, self.tokenizer),
            skip_special_tokens=True,
        )

    def generate_many(
        self,
        jobs: Mapping[str | None, Sequence[Conversation]],
        *,
        sampling: SamplingConfig | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
    ) -> dict[str | None, list[str]]:
        """Sample one answer per prompt for every adapter (None: the base model), in one engine call.

        Args:
            jobs: adapter name (None: the base model) -> prompts.
            sampling: the sampling settings (default ``SamplingConfig()``); prompt ``i`` of each job is
                sampled with seed ``sampling.seed + i``.
            temperature, top_p, max_new_tokens, seed: replace that field of ``sampling`` when given.

        Returns:
            adapter name -> answers in prompt order (stripped, special tokens removed).
        """
        settings = with_overrides(
            sampling or SamplingConfig(),
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
        )
        unknown = [name for name in jobs if name is not None and name not in self._requests]
        if unknown:
            raise KeyError(f"unknown adapter(s) {unknown}; known: {sorted(self._requests)}")
        prompts: list[dict[str, Any]] = []
        params: list[Any] = []
        loras: list[Any] = []
        owners: list[tuple[str | None, int]] = []
        for name, convs in jobs.items():
            for i, conv in enumerate(convs):
                text = prompt_text(self.tokenizer, conv)
                ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                prompts.append({"prompt_token_ids": ids})
                params.append(self._params(settings, settings.seed + i))
                loras.append(self._requests[name] if name is not None else None)
                owners.append((name, i))
        out: dict[str | None, list[str]] = {name: [""] * len(convs) for name, convs in jobs.items()}
        if not prompts:
            return out
        results = self.llm.generate(prompts, params, lora_request=loras, use_tqdm=True)
        if len(results) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(results)} outputs for {len(prompts)} prompts")
        for (name, i), result in zip(owners, results, strict=True):
            out[name][i] = result.outputs[0].text.strip()
        return out

    def generate(
        self,
        prompts: Sequence[Conversation],
        adapter: str | None = None,
        *,
        sampling: SamplingConfig | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
    ) -> list[str]:
        """Sample one answer per prompt with one adapter (None: the base model); see :meth:`generate_many`."""
        return self.generate_many(
            {adapter: prompts},
            sampling=sampling,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
        )[adapter]
