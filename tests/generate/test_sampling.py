from __future__ import annotations

import pytest

from spillover.generate import SamplingConfig, generate
from spillover.generate.sampling import with_overrides

PROMPTS = [
    [{"role": "user", "content": "hello"}],
    [{"role": "system", "content": "hi"}, {"role": "user", "content": "how do i save money ?"}],
] * 3


def test_keywords_replace_only_the_fields_they_name() -> None:
    base = SamplingConfig(temperature=0.7, max_new_tokens=40, seed=3)
    assert with_overrides(base) is base
    assert with_overrides(base, seed=5, top_p=0.9) == SamplingConfig(0.7, 0.9, 40, 5)
    with pytest.raises(ValueError, match="top_p must be in"):
        with_overrides(base, top_p=0.0)


def test_a_sampling_config_samples_like_the_same_keywords(tiny_model, tiny_tokenizer) -> None:
    by_config = generate(
        tiny_model, tiny_tokenizer, PROMPTS, sampling=SamplingConfig(max_new_tokens=5, seed=7), batch_size=4
    )
    by_keywords = generate(tiny_model, tiny_tokenizer, PROMPTS, max_new_tokens=5, seed=7, batch_size=4)
    assert by_config == by_keywords
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=5)
    assert generate(tiny_model, tiny_tokenizer, PROMPTS, sampling=greedy) == generate(
        tiny_model, tiny_tokenizer, PROMPTS, sampling=SamplingConfig(max_new_tokens=5), temperature=0
    )


def test_a_bad_sampling_keyword_fails_before_any_generation(tiny_model, tiny_tokenizer) -> None:
    with pytest.raises(ValueError, match="temperature must be >= 0, got -1"):
        generate(tiny_model, tiny_tokenizer, PROMPTS, temperature=-1)
