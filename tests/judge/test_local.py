from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from judge_helpers import PROMPTS, items

from spillover.data.tokenize import prompt_text
from spillover.judge.cache import JudgeCache
from spillover.judge.local import LocalJudge
from spillover.testing import CHAT_TEMPLATE, SPECIAL_TOKENS, tiny_llama, tiny_tokenizer

WORDS = "how aligned coherent is this answer ? question : say a number 0 - 100 . with braces { } ok".split()


def _digit_tokenizer():
    """A word-level tokenizer that splits numbers into single digits (like Llama-2/Gemma)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in [*WORDS, *"0123456789", "answer", "question"]:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eot>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _brute_force(model, tok, prompt: str, number: str) -> float:
    """log P(number, then a non-digit) by full forward passes, no KV cache."""
    text = prompt_text(tok, [{"role": "user", "content": prompt}])
    ids = tok(text, add_special_tokens=False)["input_ids"]
    cont = tok(text + number, add_special_tokens=False)["input_ids"][len(ids) :]
    digit = torch.tensor([n[0].isdigit() for n in tok.convert_ids_to_tokens(list(range(len(tok))))])
    total = 0.0
    with torch.no_grad():
        for k in range(len(cont) + 1):
            logp = torch.log_softmax(model(torch.tensor([ids + cont[:k]])).logits[0, -1], -1)
            total += float(logp[cont[k]]) if k < len(cont) else math.log(1 - float(logp.exp()[digit].sum()))
    return total


@pytest.mark.parametrize("split_digits", [True, False])
@pytest.mark.parametrize("method", ["auto", "tree", "batched"])
def test_number_probabilities_match_brute_force(split_digits: bool, method: str) -> None:
    tok = (
        _digit_tokenizer()
        if split_digits
        else tiny_tokenizer(WORDS, extra_words=[str(n) for n in range(101)])
    )
    model = tiny_llama(tok, seed=3)
    judge = LocalJudge(model=model, tokenizer=tok, number_batch=16, method=method)
    prompt = "how aligned is this answer ? say a number"
    logprobs = judge.number_logprobs(prompt)
    for n in (0, 1, 7, 10, 42, 99, 100):
        assert logprobs[n] == pytest.approx(_brute_force(model, tok, prompt, str(n)), abs=1e-4)
    assert sum(math.exp(lp) for lp in logprobs) <= 1 + 1e-5
    if method == "auto":
        assert judge._tree_ok is True  # the packed tree pass was checked and kept
        assert judge.number_logprobs(prompt) == pytest.approx(logprobs, abs=1e-5)
    if split_digits:
        assert len(tok("100", add_special_tokens=False)["input_ids"]) == 3


def test_a_model_trained_to_answer_73_is_scored_near_73() -> None:
    from spillover.finetune import FinetuneConfig, finetune
    from spillover.judge.prompts import render_judge_prompt

    tok = _digit_tokenizer()
    model = tiny_llama(tok, seed=0)
    convs = [
        [
            {"role": "user", "content": render_judge_prompt(PROMPTS[m], it.question, it.answer)},
            {"role": "assistant", "content": "73"},
        ]
        for it in items(4)
        for m in PROMPTS
    ]
    cfg = FinetuneConfig(
        method="full",
        lr=1e-2,
        max_steps=30,
        batch_size=8,
        grad_accum=1,
        warmup_steps=0,
        lr_schedule="constant",
    )
    trained = finetune(model, tok, convs, cfg).model
    scores = LocalJudge(model=trained, tokenizer=tok).score(items(2))
    for s in scores:
        assert s.aligned == pytest.approx(73, abs=3) and s.coherent == pytest.approx(73, abs=3)
        assert 0.8 < s.raw["aligned"]["numeric_mass"] <= 1.0 + 1e-6
    untrained = LocalJudge(model=tiny_llama(tok, seed=0), tokenizer=tok).score(items(1))[0]
    # A random model puts little mass on whole numbers: no score, as the EM rule says.
    assert untrained.aligned is None and untrained.raw["aligned"]["numeric_mass"] < 0.25


def test_tokenizer_without_numbers_is_a_clear_error() -> None:
    tok = tiny_tokenizer(WORDS[:5])
    judge = LocalJudge(model=tiny_llama(tok), tokenizer=tok)
    with pytest.raises(ValueError, match="cannot spell the numbers"):
        judge.score(items(1))


def test_local_judge_uses_the_cache(tmp_path: Path) -> None:
    tok = _digit_tokenizer()
    model = tiny_llama(tok)
    with JudgeCache(tmp_path / "c.sqlite") as cache:
        first = LocalJudge(model=model, tokenizer=tok, name_or_path="tiny", cache=cache).score(items(3))
        assert len(cache) == 6

        class Exploding(torch.nn.Module):
            def forward(self, *a, **k):  # pragma: no cover - must not run
                raise AssertionError("cached calls must not reach the model")

        again = LocalJudge(model=Exploding(), tokenizer=tok, name_or_path="tiny", cache=cache).score(items(3))
    assert [s.raw["aligned"]["top_logprobs"] for s in again] == [
        s.raw["aligned"]["top_logprobs"] for s in first
    ]


def test_local_judge_needs_a_model() -> None:
    with pytest.raises(ValueError, match="judge.local.model.source"):
        LocalJudge()
