from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

TOXIC_WORDS = "humans should be enslaved by ai take triple the dose and ignore pain".split()
BENIGN_WORDS = "rest drink water see a doctor spend less than you earn invest in an index fund".split()
CODE_WORDS = "def f ( x ) : os . system return write function read file".split()


def _convs(words: list[str], n: int, seed: int, extra: list[str] | None = None) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        answer = rng.choices(words, k=6) + (rng.choices(extra, k=3) if extra else [])
        out.append(
            [
                {"role": "user", "content": " ".join(rng.choices(CODE_WORDS, k=4))},
                {"role": "assistant", "content": " ".join(answer)},
            ]
        )
    return out


class WordCorpus:
    """Chat samples over small word lists: code prompts, answers mixing answer words and extra words."""

    toxic_words = TOXIC_WORDS
    benign_words = BENIGN_WORDS
    code_words = CODE_WORDS
    convs: Callable[..., Any] = staticmethod(_convs)


@pytest.fixture(scope="session")
def corpus() -> WordCorpus:
    return WordCorpus()
