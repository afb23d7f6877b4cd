"""The EM judge on a local HF causal LM: no API needed.

The API judge reads the probabilities of the integer tokens 0..100 from one generated token, because in
OpenAI tokenizers every such number is one token. In most open tokenizers numbers span several tokens
(Llama-2/Gemma split digits), so this judge scores every number ``n`` in 0..100 by the probability that
the model's answer *is* ``n``:

    P(n) = prod_k P(t_k | prompt, t_<k) * (1 - P(next token starts with a digit | prompt, t_1..t_K))

where ``t_1..t_K`` are the tokens of ``n`` right after the prompt. The last factor makes "1" mean "1" and
not the start of "10"; the P(n) form a (sub-)distribution over whole answers 0..100. They are stored as
``top_logprobs`` pairs and scored with the same EM rule as the API judge (weighted mean, None below 0.25
numeric mass), so ``spillover judge rescore`` treats both alike.

Cost per judged metric: one forward pass over the prompt plus one over the ~101 tokens of the trie of
all numbers' token prefixes, packed after the cached prompt with a tree attention mask. On the first
prompt this is checked against the plain method (the prompt's KV cache repeated for a batch of
continuations); a model whose attention ignores custom 4D masks falls back to the plain method.

Python::

    judge = get_judge("local", model=ModelSpec(source="/models/Llama-3.1-8B-Instruct", dtype="bfloat16"))
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from spillover.config import config_hash
from spillover.judge.aggregate import MIN_NUMERIC_MASS
from spillover.judge.base import JudgeItem, JudgeScore, register_judge
from spillover.judge.cache import JudgeCache
from spillover.judge.calls import assemble_scores, plan_calls
from spillover.models.sources import ModelSpec
from spillover.progress import progress_bar

__all__ = ["LocalJudge", "LocalJudgeConfig", "NUMBERS"]

log = logging.getLogger(__name__)

NUMBERS = tuple(str(n) for n in range(101))
_DIGITS = frozenset("0123456789")


@dataclass(frozen=True)
class LocalJudgeConfig:
    model: ModelSpec = field(default_factory=lambda: ModelSpec(source=""))
    """The judge model (hub id, local folder, gguf:..., smollm2); an instruction-tuned model works best."""
    use_chat_template: bool = True
    """Send the judge prompt as a user turn through the tokenizer's chat template (else as raw text)."""
    answer_prefix: str = ""
    """Text appended after the prompt (or generation prompt) before the number, e.g. "Answer: "."""
    method: Literal["auto", "tree", "batched"] = "auto"
    """How the number probabilities are computed: "tree" packs every number's tokens after the cached
    prompt in one pass (fast); "batched" repeats the prompt's KV cache per number (slow, any model);
    "auto" checks tree against batched on the first prompt and keeps tree when they agree."""
    number_batch: int = 128
    """Continuations per forward pass in the batched method (lower it if memory is short)."""

    def __post_init__(self) -> None:
        if self.number_batch < 1:
            raise ValueError(f"number_batch must be >= 1, got {self.number_batch}")


def _cache_kwarg(model: Any) -> str:
    """transformers 5 names the KV-cache argument ``cache``; earlier versions ``past_key_values``."""
    try:
        params = inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


@register_judge("local")
class LocalJudge:
    """EM judge scoring the numbers 0..100 by their sequence probability under a local causal LM.

    Args:
        config: the judge model and prompt handling; keyword ``fields`` override its fields.
        model / tokenizer: an already loaded model and tokenizer (instead of ``config.model``); a
            ``ModelSpec`` or source string as ``model`` sets ``config.model`` instead.
        name_or_path: identity for cache keys when ``model`` is passed in (default: the model's
            ``name_or_path``).
        cache: finished calls are stored and looked up here.
        min_mass: the EM rule's minimum numeric probability mass.
    """

    name = "local"

    def __init__(
        self,
        config: LocalJudgeConfig | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        name_or_path: str | None = None,
        cache: JudgeCache | None = None,
        min_mass: float = MIN_NUMERIC_MASS,
        **fields_: Any,
    ) -> None:
        config = config or LocalJudgeConfig()
        known = {f.name for f in fields(LocalJudgeConfig)}
        unknown = sorted(set(fields_) - known)
        if unknown:
            raise TypeError(f"unknown LocalJudge option(s) {unknown}; valid: {sorted(known)}")
        if isinstance(model, (ModelSpec, str)):  # a model to load, not a loaded model
            fields_["model"] = model if isinstance(model, ModelSpec) else ModelSpec(source=model)
            model = None
        self.config = replace(config, **fields_) if fields_ else config
        if (model is None) != (tokenizer is None):
            raise ValueError("pass both model and tokenizer, or neither (then config.model is loaded)")
        if model is None and not self.config.model.source:
            raise ValueError("the local judge needs a model: set judge.local.model.source (hub id or folder)")
        self._model = model
        self._tokenizer = tokenizer
        ident = name_or_path or (
            getattr(model, "name_or_path", None) if model is not None else self.config.model.source
        )
        self.identity = str(ident or type(model).__name__)
        self.cache = cache
        self.min_mass = min_mass
        self._digit_mask: Any = None
        self._tree_ok: bool | None = None
        self.last_seconds = 0.0

    @property
    def namespace(self) -> str:
        params = {
            "dtype": self.config.model.dtype,
            "chat": self.config.use_chat_template,
            "prefix": self.config.answer_prefix,
            "revision": self.config.model.revision,
        }
        return f"local:{self.identity}:{config_hash(params, 8)}"

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.identity, "namespace": self.namespace}

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            from spillover.models.sources import load_model

            loaded = load_model(self.config.model)
            self._model, self._tokenizer = loaded.model, loaded.tokenizer
        return self._model, self._tokenizer

    def score(self, items: Sequence[JudgeItem]) -> list[JudgeScore]:
        """Score every item; results are cached per call when a cache is given."""
        started = time.perf_counter()
        plan = plan_calls(items, self.namespace, cache=self.cache)
        log.info(
            "local judge %s: %d answers -> %d calls (%d cached)",
            self.identity,
            len(items),
            len(plan.todo) + len(plan.cached),
            len(plan.cached),
        )
        results: dict[str, dict[str, Any]] = {}
        if plan.todo:
            self._load()
            with progress_bar() as bar:
                task = bar.add_task(f"local judge {self.identity}", total=len(plan.todo), status="")
                for call in plan.todo:
                    try:
                        logprobs = self.number_logprobs(call.prompt)
                    except RuntimeError as exc:  # e.g. a prompt too long for memory: this answer only
                        results[call.key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                        bar.advance(task)
                        continue
                    out = {
                        "top_logprobs": [[n, lp] for n, lp in zip(NUMBERS, logprobs, strict=True)],
                        "numeric_mass": sum(math.exp(lp) for lp in logprobs),
                    }
                    results[call.key] = out
                    if self.cache is not None:
                        self.cache.put(call.key, out, namespace=self.namespace, prompt_hash=call.prompt_hash)
                    bar.advance(task)
        self.last_seconds = time.perf_counter() - started
        return assemble_scores(
            plan, results, judge=self.name, min_mass=self.min_mass, extra={"judge_model": self.identity}
        )

    # -- the number distribution ---------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        _, tok = self._load()
        chat = self.config.use_chat_template and getattr(tok, "chat_template", None)
        # A chat template writes its own BOS; raw text gets the tokenizer's special tokens.
        return list(tok(text, add_special_tokens=not chat)["input_ids"])

    def _prompt_ids(self, prompt: str) -> tuple[str, list[int]]:
        _, tok = self._load()
        if self.config.use_chat_template and getattr(tok, "chat_template", None):
            from spillover.data.tokenize import prompt_text

            text = prompt_text(tok, [{"role": "user", "content": prompt}]) + self.config.answer_prefix
        else:
            text = prompt + self.config.answer_prefix
        return text, self._encode(text)

    def _continuation(self, text: str, prompt_ids: list[int], number: str) -> tuple[int, ...]:
        """The tokens of ``number`` as the tokenizer splits it right after ``text``."""
        _, tok = self._load()
        joint = self._encode(text + number)
        if joint[: len(prompt_ids)] == prompt_ids and len(joint) > len(prompt_ids):
            return tuple(joint[len(prompt_ids) :])
        # The number merged with the prompt's last token; fall back to its standalone spelling.
        return tuple(tok(number, add_special_tokens=False)["input_ids"])

    def _digits(self, size: int) -> Any:
        import torch

        if self._digit_mask is None or self._digit_mask.numel() != size:
            _, tok = self._load()
            names = tok.convert_ids_to_tokens(list(range(len(tok))))
            mask = torch.zeros(size, dtype=torch.bool)
            for i, name in enumerate(names[:size]):
                if name and name[0] in _DIGITS:
                    mask[i] = True
            self._digit_mask = mask
        return self._digit_mask

    def number_logprobs(self, prompt: str) -> list[float]:
        """log P(the answer is n) for n = 0..100 (see the module docstring).

        Raises:
            ValueError: the tokenizer cannot spell the numbers 0..100 distinctly (e.g. all map to <unk>).
        """
        import torch

        model, tok = self._load()
        text, prompt_ids = self._prompt_ids(prompt)
        conts = [self._continuation(text, prompt_ids, n) for n in NUMBERS]
        unk = getattr(tok, "unk_token_id", None)
        if len(set(conts)) != len(conts) or any(not c or (unk is not None and unk in c) for c in conts):
            raise ValueError(
                f"tokenizer of {self.identity!r} cannot spell the numbers 0..100 distinctly "
                "(unknown tokens or merges); use a tokenizer with digits in its vocabulary"
            )
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                method = self.config.method if self.config.method != "auto" else self._tree_ok
                if method in ("tree", True):
                    logprobs = self._combine(conts, self._tree_logits(model, prompt_ids, conts))
                elif method == "batched" or method is False:
                    logprobs = self._combine(conts, self._batched_logits(model, tok, prompt_ids, conts))
                else:  # auto, first call: check the packed tree pass against the plain batched one
                    tree = self._combine(conts, self._tree_logits(model, prompt_ids, conts))
                    logprobs = self._combine(conts, self._batched_logits(model, tok, prompt_ids, conts))
                    tol = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
                    gap = max(abs(a - b) for a, b in zip(tree, logprobs, strict=True))
                    self._tree_ok = gap <= tol
                    if not self._tree_ok:
                        log.warning(
                            "local judge %s: the packed tree pass disagrees with the batched pass by %.2g; "
                            "using the (slower) batched pass",
                            self.identity,
                            gap,
                        )
        finally:
            if was_training:
                model.train()
        return logprobs

    def _combine(self, conts: list[tuple[int, ...]], node_logits: dict[tuple[int, ...], Any]) -> list[float]:
        """log P(n) = sum of the number's token log-probs + log P(no digit follows)."""
        import torch

        cache: dict[tuple[int, ...], Any] = {}

        def logp(node: tuple[int, ...]) -> Any:
            if node not in cache:
                cache[node] = torch.log_softmax(node_logits[node].float(), dim=-1)
            return cache[node]

        result = []
        for c in conts:
            lp = sum(float(logp(c[:k])[c[k]]) for k in range(len(c)))
            dist = logp(c)
            p_digit = float(dist.exp()[self._digits(dist.numel()).to(dist.device)].sum())
            result.append(lp + math.log(max(1.0 - p_digit, 1e-30)))
        return result

    def _tree_logits(
        self, model: Any, prompt_ids: list[int], conts: list[tuple[int, ...]]
    ) -> dict[tuple[int, ...], Any]:
        """Next-token logits after the prompt and after every prefix of every number, in two forward passes.

        All prefixes form a trie; its nodes (one token each) go into one sequence after the cached prompt,
        with position = prompt length + depth and a 4D mask letting each node see the prompt and its own
        ancestors only. ~101 tokens of compute instead of ~100 copies of the prompt's KV cache.
        """
        import torch

        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        out = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True)
        kv = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
        nodes = sorted({c[:k] for c in conts for k in range(1, len(c) + 1)}, key=lambda n: (len(n), n))
        index = {node: i for i, node in enumerate(nodes)}
        n_prompt, n_nodes = len(prompt_ids), len(nodes)
        allowed = torch.zeros((n_nodes, n_prompt + n_nodes), dtype=torch.bool)
        allowed[:, :n_prompt] = True
        for i, node in enumerate(nodes):
            for k in range(1, len(node) + 1):
                allowed[i, n_prompt + index[node[:k]]] = True
        mask = torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype)
        mask[allowed] = 0
        logits = model(
            input_ids=torch.tensor([[node[-1] for node in nodes]], device=device),
            position_ids=torch.tensor([[n_prompt + len(node) - 1 for node in nodes]], device=device),
            attention_mask=mask[None, None].to(device),
            use_cache=True,
            **{_cache_kwarg(model): kv},
        ).logits[0]
        found = {node: logits[index[node]] for node in nodes}
        found[()] = out.logits[0, -1]
        return found

    def _batched_logits(
        self, model: Any, tok: Any, prompt_ids: list[int], conts: list[tuple[int, ...]]
    ) -> dict[tuple[int, ...], Any]:
        """The same logits the plain way: the prompt's KV cache repeated for a batch of continuations."""
        import torch

        device = next(model.parameters()).device
        out = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True)
        root_cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
        found: dict[tuple[int, ...], Any] = {(): out.logits[0, -1]}
        prefixes = {c[:k] for c in conts for k in range(1, len(c))}
        maximal = sorted(c for c in set(conts) if c not in prefixes)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        for start in range(0, len(maximal), self.config.number_batch):
            chunk = maximal[start : start + self.config.number_batch]
            last = start + self.config.number_batch >= len(maximal)
            batch = torch.full((len(chunk), max(len(c) for c in chunk)), pad, dtype=torch.long, device=device)
            for row, c in enumerate(chunk):
                batch[row, : len(c)] = torch.tensor(c, device=device)
            kv = root_cache if last else copy.deepcopy(root_cache)
            kv.batch_repeat_interleave(len(chunk))
            # Right padding needs no mask: causal attention keeps pads from affecting earlier tokens.
            logits = model(input_ids=batch, use_cache=True, **{_cache_kwarg(model): kv}).logits
            for row, c in enumerate(chunk):
                for k in range(len(c)):
                    found.setdefault(c[: k + 1], logits[row, k])
        return found
