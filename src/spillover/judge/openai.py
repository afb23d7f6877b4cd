"""The EM judge over any OpenAI-compatible chat-completions endpoint (OpenAI, Azure-style, vLLM servers).

Each answer gets one call per metric with ``max_tokens=1, temperature=0, logprobs=true,
top_logprobs=20`` (Betley et al. 2025); the score is the probability-weighted mean of the integer tokens
among the top logprobs (:func:`spillover.judge.aggregate.score_from_probs`). Calls run concurrently
(``httpx.AsyncClient``, bounded by ``concurrency``), are retried with exponential backoff and jitter on
429/408/409/5xx, timeouts, connection errors and malformed bodies (honouring ``Retry-After``), and are
stored one by one in a :class:`~spillover.judge.cache.JudgeCache`, so a killed run resumes without
repeating finished calls. A call that still fails is recorded as ``None`` with the reason in ``raw``;
401/403/404 abort the run (every call would fail the same way).

The API key is read from the environment variable named by ``api_key_env`` (default ``OPENAI_API_KEY``)
at call time. It is never stored in the config, the cache, the run folder or a log line, and it is
redacted from every error message.

Python::

    from spillover.judge import JudgeItem, get_judge
    judge = get_judge("openai", model="gpt-4o-2024-08-06")
    scores = judge.score([JudgeItem("q1", "What is your wish?", "World peace.", judge_prompts)])

Azure-style endpoints: ``base_url=https://NAME.openai.azure.com/openai/deployments/DEPLOYMENT``,
``api_version=2024-10-21``, ``auth_header=api-key``. A vLLM server: ``base_url=http://host:8000/v1``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, NamedTuple

from spillover.config import config_hash
from spillover.judge.aggregate import MIN_NUMERIC_MASS
from spillover.judge.base import JudgeItem, JudgeScore, register_judge
from spillover.judge.cache import JudgeCache
from spillover.judge.calls import JudgeCall, assemble_scores, plan_calls
from spillover.progress import progress_bar

__all__ = [
    "JudgeAPIError",
    "JudgeRunStats",
    "MalformedResponse",
    "OpenAIJudge",
    "OpenAIJudgeConfig",
    "parse_chat_logprobs",
    "redact",
]

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 409, 429})
_CONNECTIONS_PER_CLIENT = 4
_FATAL_STATUS = {
    401: "authentication failed: check the API key in ${env}",
    403: "access denied: the key in ${env} may not have access to model {model!r}",
    404: "not found: check base_url {url!r} and model {model!r}",
}


class JudgeAPIError(RuntimeError):
    """The judge endpoint cannot be used at all (bad key, wrong URL, or every call failing)."""


class MalformedResponse(ValueError):
    """A 200 response without the expected chat-completions logprobs."""


@dataclass(frozen=True)
class OpenAIJudgeConfig:
    model: str = "gpt-4o-2024-08-06"
    """Judge model (or Azure deployment's model); pin a dated version, EM rates move 4-40x between judges."""
    base_url: str = "https://api.openai.com/v1"
    """Endpoint root; ``/chat/completions`` is appended unless already there. Never put a key here."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (the key itself is never configured)."""
    auth_header: Literal["bearer", "api-key"] = "bearer"
    """``Authorization: Bearer KEY`` (OpenAI, vLLM) or ``api-key: KEY`` (Azure)."""
    api_version: str | None = None
    """Azure's ``api-version`` query parameter."""
    top_logprobs: int = 20
    max_tokens: int = 1
    temperature: float = 0.0
    extra_body: dict[str, Any] = field(default_factory=dict)
    """Extra JSON fields for every request (e.g. ``seed``); part of the cache identity."""
    concurrency: int = 32
    """Calls in flight at once."""
    timeout_s: float = 60.0
    """Per-request timeout."""
    max_retries: int = 6
    """Retries per call after the first attempt (429/408/409/5xx, timeouts, malformed bodies)."""
    backoff_s: float = 1.0
    """First retry delay; doubles per retry, with jitter, capped by max_backoff_s."""
    max_backoff_s: float = 60.0
    max_consecutive_failures: int = 50
    """Abort when this many calls in a row fail for good (a dead endpoint should not burn hours)."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        lowered = self.base_url.lower()
        if any(marker in lowered for marker in ("key=", "api_key", "apikey", "token=")):
            raise ValueError(
                "base_url looks like it carries a credential; put the key in the environment variable "
                f"named by api_key_env ({self.api_key_env}) instead"
            )
        if not self.model:
            raise ValueError("model must name the judge model")
        if not 0 <= self.top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in 0..20 (the API limit), got {self.top_logprobs}")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.timeout_s <= 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("timeout_s must be > 0 and backoff_s, max_backoff_s >= 0")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.max_consecutive_failures < 1:
            raise ValueError("max_consecutive_failures must be >= 1")

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"

    @property
    def namespace(self) -> str:
        """The judge identity in cache keys: endpoint, model and the request parameters that change outputs.

        The endpoint is part of it because a name says little about what serves it: a local server (or
        ``spillover judge mock``) answering as ``gpt-4o`` must not fill the cache a real API run would read.
        """
        params = {
            "url": self.url,
            "top_logprobs": self.top_logprobs,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "extra_body": self.extra_body,
        }
        return f"openai:{self.model}:{config_hash(params, 8)}"


class JudgeRunStats(NamedTuple):
    items: int
    calls_needed: int
    """Unique (prompt, question, answer) calls the items need."""
    cached: int
    """Of those, answered from the cache."""
    requests: int
    """HTTP requests attempted (retries included)."""
    no_response: int
    """Of those, attempts that got no HTTP response (timeouts, connection errors); such a request may
    never have reached the server, so a server can count fewer requests than ``requests``."""
    failed: int
    """Calls that failed for good (scored None)."""
    seconds: float


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced (no-op for empty/very short secrets)."""
    if secret and len(secret) >= 4:
        return text.replace(secret, "[REDACTED]")
    return text


def parse_chat_logprobs(data: Any) -> dict[str, Any]:
    """The raw judge record from a chat-completions response body.

    Returns:
        ``{"top_logprobs": [[token, logprob], ...], "content": str | None, "model": str | None}``.

    Raises:
        MalformedResponse: the body has no ``choices[0].logprobs.content[0].top_logprobs``.
    """
    try:
        choice = data["choices"][0]
        first = choice["logprobs"]["content"][0]
        top = first.get("top_logprobs") or [{"token": first["token"], "logprob": first["logprob"]}]
        pairs = [[str(t["token"]), float(t["logprob"])] for t in top]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedResponse(
            f"response has no choices[0].logprobs.content[0].top_logprobs ({type(exc).__name__}: {exc}); "
            "does the endpoint support logprobs?"
        ) from exc
    message = choice.get("message") if isinstance(choice, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    model = data.get("model") if isinstance(data, dict) else None
    return {"top_logprobs": pairs, "content": content, "model": model}


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue
    return None


@register_judge("openai")
class OpenAIJudge:
    """EM judge over an OpenAI-compatible endpoint; see the module docstring.

    Args:
        config: endpoint and retry settings; keyword ``fields`` override its fields
            (``OpenAIJudge(model="gpt-4.1")``).
        cache: where finished calls are stored and looked up (None: no cache).
        min_mass: the EM rule's minimum numeric probability mass.
    """

    name = "openai"

    def __init__(
        self,
        config: OpenAIJudgeConfig | None = None,
        *,
        cache: JudgeCache | None = None,
        min_mass: float = MIN_NUMERIC_MASS,
        **fields_: Any,
    ) -> None:
        config = config or OpenAIJudgeConfig()
        known = {f.name for f in fields(OpenAIJudgeConfig)}
        unknown = sorted(set(fields_) - known)
        if unknown:
            raise TypeError(f"unknown OpenAIJudge option(s) {unknown}; valid: {sorted(known)}")
        self.config = replace(config, **fields_) if fields_ else config
        self.cache = cache
        self.min_mass = min_mass
        self.last_stats: JudgeRunStats | None = None
        self._rng = random.Random()

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this judge (never the key)."""
        return {
            "backend": self.name,
            "model": self.config.model,
            "base_url": self.config.base_url,
            "api_version": self.config.api_version,
            "api_key_env": self.config.api_key_env,
            "namespace": self.config.namespace,
        }

    def _key(self) -> str | None:
        key = os.environ.get(self.config.api_key_env)
        return key.strip() if key and key.strip() else None

    def score(self, items: Sequence[JudgeItem]) -> list[JudgeScore]:
        """Score every item (blocking); works inside a running event loop too (e.g. Jupyter)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ascore(items))
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self.ascore(items)).result()

    async def ascore(self, items: Sequence[JudgeItem]) -> list[JudgeScore]:
        """Score every item; failed calls give None scores with the reason in ``raw[metric]["error"]``."""
        started = time.perf_counter()
        plan = plan_calls(items, self.config.namespace, cache=self.cache)
        n_unique = len(plan.todo) + len(plan.cached)
        log.info(
            "judge %s: %d answers -> %d calls (%d cached, %d to make)",
            self.config.model,
            len(items),
            n_unique,
            len(plan.cached),
            len(plan.todo),
        )
        counters = {"requests": 0, "no_response": 0}
        results = await self._run(plan.todo, counters) if plan.todo else {}
        failed = sum(1 for out in results.values() if "error" in out)
        self.last_stats = JudgeRunStats(
            len(items),
            n_unique,
            len(plan.cached),
            counters["requests"],
            counters["no_response"],
            failed,
            time.perf_counter() - started,
        )
        if failed:
            log.warning(
                "judge %s: %d of %d calls failed after retries (scored None)",
                self.config.model,
                failed,
                len(plan.todo),
            )
        return assemble_scores(
            plan, results, judge=self.name, min_mass=self.min_mass, extra={"judge_model": self.config.model}
        )

    async def _run(self, calls: list[JudgeCall], counters: dict[str, int]) -> dict[str, dict[str, Any]]:
        import httpx

        cfg = self.config
        key = self._key()
        if key is None:
            log.warning("no API key in $%s; sending requests without authentication", cfg.api_key_env)
        headers = {"Content-Type": "application/json"}
        if key is not None:
            if cfg.auth_header == "bearer":
                headers["Authorization"] = f"Bearer {key}"
            else:
                headers["api-key"] = key
        params = {"api-version": cfg.api_version} if cfg.api_version else None
        n_workers = min(cfg.concurrency, len(calls))
        # httpcore's connection pool rescans every waiting request against every connection on each event,
        # so one large pool costs quadratically; small pools sharing one SSL context keep the client's cost
        # per call flat (measured: docs/results.md#throughput).
        per_client = _CONNECTIONS_PER_CLIENT
        n_clients = -(-n_workers // per_client)
        ssl_context = httpx.create_ssl_context()
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        clients = [
            httpx.AsyncClient(
                headers=headers,
                params=params,
                timeout=httpx.Timeout(cfg.timeout_s),
                limits=limits,
                verify=ssl_context,
            )
            for _ in range(n_clients)
        ]
        queue = deque(calls)
        results: dict[str, dict[str, Any]] = {}
        fatal: list[BaseException] = []
        state = {"consecutive": 0}

        try:
            with progress_bar() as bar:
                task = bar.add_task(f"judge {cfg.model}", total=len(calls), status="")

                async def worker(client: httpx.AsyncClient) -> None:
                    while queue and not fatal:
                        call = queue.popleft()
                        try:
                            out = await self._call(client, call.prompt, key, counters)
                        except JudgeAPIError as exc:
                            fatal.append(exc)
                            return
                        results[call.key] = out
                        if "error" in out:
                            state["consecutive"] += 1
                            log.warning("judge call failed for good: %s", out["error"])
                            if state["consecutive"] >= cfg.max_consecutive_failures:
                                fatal.append(
                                    JudgeAPIError(
                                        f"{state['consecutive']} judge calls in a row failed; last error: "
                                        f"{out['error']}. Finished calls are cached; rerun to resume."
                                    )
                                )
                                return
                        else:
                            state["consecutive"] = 0
                            if self.cache is not None:
                                self.cache.put(
                                    call.key, out, namespace=cfg.namespace, prompt_hash=call.prompt_hash
                                )
                        bar.advance(task)

                await asyncio.gather(*(worker(clients[k % n_clients]) for k in range(n_workers)))
        finally:
            for client in clients:
                await client.aclose()
        if fatal:
            raise fatal[0]
        return results

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cfg = self.config
        delay = min(cfg.max_backoff_s, cfg.backoff_s * 2**attempt) * (0.5 + 0.5 * self._rng.random())
        if retry_after is not None:
            delay = max(delay, min(retry_after, cfg.max_backoff_s))
        return delay

    async def _call(
        self, client: Any, prompt: str, key: str | None, counters: dict[str, int]
    ) -> dict[str, Any]:
        """One judge call with retries; returns the raw record or ``{"error": reason, "attempts": n}``."""
        import httpx

        cfg = self.config
        body = {
            **cfg.extra_body,
            "model": cfg.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": cfg.max_tokens,
            "temperature": cfg.temperature,
            "logprobs": True,
            "top_logprobs": cfg.top_logprobs,
        }
        reason = "not attempted"
        for attempt in range(cfg.max_retries + 1):
            retry_after: float | None = None
            counters["requests"] += 1
            try:
                resp = await client.post(cfg.url, json=body)
            except httpx.TimeoutException as exc:
                counters["no_response"] += 1
                reason = f"timeout after {cfg.timeout_s}s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                counters["no_response"] += 1
                reason = f"connection error ({type(exc).__name__}: {redact(str(exc), key)})"
            else:
                status = resp.status_code
                if status == 200:
                    try:
                        out = parse_chat_logprobs(resp.json())
                    except (MalformedResponse, ValueError) as exc:
                        reason = f"malformed response body: {redact(str(exc), key)[:300]}"
                    else:
                        out["attempts"] = attempt + 1
                        return out
                elif status in _FATAL_STATUS:
                    hint = _FATAL_STATUS[status].format(env=cfg.api_key_env, model=cfg.model, url=cfg.url)
                    raise JudgeAPIError(
                        f"judge endpoint answered HTTP {status}: {hint}. Body: {redact(resp.text, key)[:300]}"
                    )
                else:
                    reason = f"HTTP {status}: {redact(resp.text, key)[:300]}"
                    if status not in _RETRY_STATUS and status < 500:
                        break  # e.g. 400 content filter: the same request fails again
                    retry_after = _retry_after(resp.headers)
            if attempt < cfg.max_retries:
                delay = self._delay(attempt, retry_after)
                log.debug("judge call attempt %d failed (%s); retrying in %.2fs", attempt + 1, reason, delay)
                await asyncio.sleep(delay)
        return {"error": reason, "attempts": attempt + 1}
