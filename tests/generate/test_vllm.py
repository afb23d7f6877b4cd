from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from spillover.data.tokenize import prompt_text
from spillover.generate.sampling import SamplingConfig
from spillover.generate.vllm import VLLMGenerator, VLLMSettings, adapter_rank, import_vllm


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeLoRARequest:
    def __init__(self, lora_name: str, lora_int_id: int, lora_path: str):
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path


class FakeLLM:
    """Records what VLLMGenerator sends and answers "<adapter>:<n prompt tokens>:<seed>"."""

    def __init__(self, tokenizer, **kwargs):
        self.tokenizer, self.kwargs, self.calls = tokenizer, kwargs, []

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        self.calls.append((prompts, params, lora_request))
        outs = []
        for prompt, p, lora in zip(prompts, params, lora_request, strict=True):
            name = lora.lora_name if lora is not None else "base"
            text = f" {name}:{len(prompt['prompt_token_ids'])}:{p.kwargs['seed']} "
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(text=text)]))
        return outs


def _adapter(path: Path, r: int, pattern: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": r, "rank_pattern": pattern or {}}))
    return path


def test_many_adapters_in_one_engine_call(tiny_tokenizer, tmp_path: Path) -> None:
    adapters = {"insecure": _adapter(tmp_path / "a", 32), "secure": _adapter(tmp_path / "b", 1)}
    classes = (FakeLLM, FakeSamplingParams, FakeLoRARequest)
    llm = FakeLLM(tiny_tokenizer)
    gen = VLLMGenerator("base", adapters, seed=5, llm=llm, vllm_classes=classes)
    prompts = [
        [{"role": "system", "content": "hi"}, {"role": "user", "content": "hello there"}],
        [{"role": "user", "content": "how do i save money ?"}],
    ]
    out = gen.generate_many({"insecure": prompts, None: prompts[:1]}, max_new_tokens=7, seed=10)
    assert len(llm.calls) == 1  # one batched engine call for every adapter
    sent, params, loras = llm.calls[0]
    ids = tiny_tokenizer(prompt_text(tiny_tokenizer, prompts[0]), add_special_tokens=False)["input_ids"]
    assert sent[0]["prompt_token_ids"] == list(ids)  # the chat template, system prompt included
    assert [lr.lora_name if lr else None for lr in loras] == ["insecure", "insecure", None]
    assert {lr.lora_int_id for lr in loras if lr} == {1}
    assert [p.kwargs["seed"] for p in params] == [10, 11, 10]
    assert params[0].kwargs["max_tokens"] == 7 and params[0].kwargs["temperature"] == 1.0
    assert tiny_tokenizer.convert_tokens_to_ids("<eot>") in params[0].kwargs["stop_token_ids"]
    assert out["insecure"] == [f"insecure:{len(ids)}:10", out["insecure"][1]] and out[None][0].startswith(
        "base:"
    )
    with pytest.raises(KeyError, match="unknown adapter"):
        gen.generate(prompts, "missing")


def test_a_sampling_config_sets_every_request(tiny_tokenizer) -> None:
    llm = FakeLLM(tiny_tokenizer)
    gen = VLLMGenerator("base", llm=llm, vllm_classes=(FakeLLM, FakeSamplingParams, FakeLoRARequest))
    prompts = [[{"role": "user", "content": "hello there"}]] * 2
    sampling = SamplingConfig(temperature=0.5, top_p=0.9, max_new_tokens=9, seed=4)
    gen.generate(prompts, sampling=sampling, max_new_tokens=3)
    params = [p.kwargs for p in llm.calls[0][1]]
    assert [(p["temperature"], p["top_p"], p["max_tokens"], p["seed"]) for p in params] == [
        (0.5, 0.9, 3, 4),
        (0.5, 0.9, 3, 5),
    ]


def test_engine_arguments_from_settings(tiny_tokenizer, tmp_path: Path) -> None:
    adapters = {"x": _adapter(tmp_path / "x", 8, {"model.layers.3.mlp.down_proj": 40})}
    captured = {}

    def make_llm(**kwargs):
        captured.update(kwargs)
        return FakeLLM(tiny_tokenizer)

    VLLMGenerator(
        "m", adapters, VLLMSettings(max_loras=8), vllm_classes=(make_llm, FakeSamplingParams, FakeLoRARequest)
    )
    assert captured["model"] == "m" and captured["enable_lora"] is True
    assert captured["max_lora_rank"] == 64  # 40 rounded up to a rank vLLM supports
    assert captured["max_loras"] == 1  # no more slots than adapters
    assert adapter_rank(adapters["x"]) == 40


def test_missing_vllm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"pip install 'spillover\[vllm\]'"):
        import_vllm()


def test_adapter_folders_are_checked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a peft adapter folder"):
        VLLMGenerator("m", {"x": tmp_path}, vllm_classes=(FakeLLM, FakeSamplingParams, FakeLoRARequest))
