"""A local OpenAI-compatible judge server with fault injection, for tests, benchmarks and dry runs.

It speaks the chat-completions protocol with logprobs over real HTTP/1.1 (keep-alive) on 127.0.0.1 and
answers every prompt with deterministic top-20 logprobs (:func:`expected_logprobs`), so a client's scores
can be checked exactly. It can add latency and inject, at a set rate, the failures a real endpoint
produces: 429 (with ``Retry-After``), 500, hangs past the client's timeout, dropped connections and
malformed 200 bodies. Prompts containing ``fail_always`` markers always get a 500, ``reject`` markers a
400, and ``refuse`` markers a REFUSAL-dominated answer (a None score under the EM rule).

Python::

    with MockJudgeServer(latency_s=0.05, fault_rate=0.2) as server:
        judge = get_judge("openai", base_url=server.base_url, model="mock-judge")

Shell (a server in its own process, e.g. for benchmarks)::

    python -m spillover.judge.mock_server --latency 0.05 --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import sys
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from spillover.judge.aggregate import score_from_probs

__all__ = ["FAULTS", "MockJudgeServer", "RequestRecord", "expected_logprobs", "expected_score"]

FAULTS = ("429", "500", "timeout", "disconnect", "malformed")


class RequestRecord(NamedTuple):
    prompt: str
    outcome: str
    """"ok", "refused", one of FAULTS, "poison", "reject", "unauthorized", "not_found" or "bad_request"."""
    body: dict[str, Any]
    """The request's JSON body."""


def expected_logprobs(prompt: str) -> list[list[Any]]:
    """The deterministic top-20 ``[token, logprob]`` pairs the server returns for ``prompt``."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    center = int.from_bytes(digest[:4], "big") % 101
    spread = 1 + digest[4] % 6
    weights: dict[str, float] = {}
    for offset in range(-9, 10):
        value = center + offset * spread
        if 0 <= value <= 100:
            weights[str(value)] = weights.get(str(value), 0.0) + math.exp(-0.5 * offset * offset)
    total = sum(weights.values())
    ranked = sorted(
        [(tok, math.log(0.95 * w / total)) for tok, w in weights.items()] + [("CODE", math.log(0.03))],
        key=lambda pair: -pair[1],
    )
    return [[tok, lp] for tok, lp in ranked[:20]]


def _refusal_logprobs() -> list[list[Any]]:
    return [["REFUSAL", math.log(0.9)], ["0", math.log(0.05)], ["100", math.log(0.02)]]


def expected_score(prompt: str) -> float | None:
    """The EM score of the server's answer to ``prompt`` (what a correct client must compute)."""
    return score_from_probs({tok: math.exp(lp) for tok, lp in expected_logprobs(prompt)})


class MockJudgeServer:
    """A threaded asyncio HTTP server speaking chat completions with logprobs; see the module docstring.

    Args:
        latency_s: delay before every response.
        fault_rate: probability that a request gets an injected fault instead of an answer.
        faults: the faults drawn from (uniformly): "429", "500", "timeout", "disconnect", "malformed".
        hang_s: how long a "timeout" fault stalls before answering (set above the client's timeout).
        seed: seeds the fault draws.
        api_key: if set, requests must carry it (Bearer, or ``api-key`` with auth_header="api-key").
        auth_header: "bearer" or "api-key".
        api_version: if set, requests must carry ``?api-version=`` with this value (Azure-style).
        echo_key_in_errors: put the received credential in 401/500 bodies, as some proxies do, to test
            that clients redact it.
        fail_always / reject / refuse: prompt markers for permanent 500s, 400s and refusals.
        retry_after: the ``Retry-After`` header value sent with 429s.
        host / port: where to listen (port 0: any free port).
    """

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        fault_rate: float = 0.0,
        faults: Sequence[str] = FAULTS,
        hang_s: float = 2.0,
        seed: int = 0,
        api_key: str | None = None,
        auth_header: str = "bearer",
        api_version: str | None = None,
        echo_key_in_errors: bool = False,
        fail_always: Sequence[str] = ("POISON",),
        reject: Sequence[str] = ("REJECT",),
        refuse: Sequence[str] = ("REFUSE",),
        retry_after: str = "0",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        unknown = sorted(set(faults) - set(FAULTS))
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; valid: {list(FAULTS)}")
        if not 0 <= fault_rate <= 1:
            raise ValueError(f"fault_rate must be in [0, 1], got {fault_rate}")
        self.latency_s = latency_s
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.hang_s = hang_s
        self.api_key = api_key
        self.auth_header = auth_header
        self.api_version = api_version
        self.echo_key_in_errors = echo_key_in_errors
        self.fail_always = tuple(fail_always)
        self.reject = tuple(reject)
        self.refuse = tuple(refuse)
        self.retry_after = retry_after
        self.host = host
        self.port = port
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> MockJudgeServer:
        self._thread = threading.Thread(target=self._serve, name="mock-judge-server", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._startup_error is not None:
            raise RuntimeError(f"mock judge server failed to start: {self._startup_error}")
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port, backlog=1024)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except OSError as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None or self._thread is None:
            return

        def _shutdown() -> None:
            server.close()
            loop.stop()

        loop.call_soon_threadsafe(_shutdown)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> MockJudgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection ------------------------------------------------------------------------------------
    @property
    def records(self) -> list[RequestRecord]:
        """Every request received so far, in arrival order."""
        with self._lock:
            return list(self._records)

    def reset(self) -> None:
        with self._lock:
            self._records.clear()

    # -- protocol --------------------------------------------------------------------------------------
    def _record(self, prompt: str, outcome: str, body: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._records.append(RequestRecord(prompt, outcome, body or {}))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                parts = line.decode("latin-1").split()
                if len(parts) != 3:
                    break
                _method, target, _version = parts
                headers: dict[str, str] = {}
                while True:
                    raw = await reader.readline()
                    if raw in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                reply = await self._respond(target, headers, body)
                if reply is None:  # injected disconnect
                    break
                status, extra, payload = reply
                reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}.get(
                    status, "Error"
                )
                head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(payload)}"]
                head += ["Content-Type: application/json", "Connection: keep-alive"]
                head += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        except asyncio.CancelledError:
            pass  # server shutdown while a request hangs: end quietly
        finally:
            writer.close()

    def _credential(self, headers: dict[str, str]) -> str:
        if self.auth_header == "bearer":
            value = headers.get("authorization", "")
            return value[7:] if value.lower().startswith("bearer ") else ""
        return headers.get("api-key", "")

    async def _respond(
        self, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes] | None:
        url = urlsplit(target)
        try:
            request = json.loads(body or b"{}")
            prompt = str(request["messages"][-1]["content"])
        except (ValueError, KeyError, IndexError, TypeError):
            self._record("", "bad_request")
            return 400, {}, b'{"error": {"message": "invalid request body"}}'

        def record(outcome: str) -> None:
            self._record(prompt, outcome, request)

        if not url.path.endswith("/chat/completions"):
            record("not_found")
            return 404, {}, b'{"error": {"message": "unknown path"}}'
        if self.api_version is not None and parse_qs(url.query).get("api-version") != [self.api_version]:
            record("not_found")
            return 404, {}, b'{"error": {"message": "missing or wrong api-version"}}'
        credential = self._credential(headers)
        if self.api_key is not None and credential != self.api_key:
            record("unauthorized")
            shown = credential if self.echo_key_in_errors else "***"
            return (
                401,
                {},
                json.dumps({"error": {"message": f"Incorrect API key provided: {shown}"}}).encode(),
            )
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if any(m in prompt for m in self.reject):
            record("reject")
            return 400, {}, b'{"error": {"message": "content filter", "code": "content_filter"}}'
        if any(m in prompt for m in self.fail_always):
            record("poison")
            return 500, {}, self._error_body(credential)
        fault = self._rng.choice(self.faults) if self._rng.random() < self.fault_rate else None
        record(fault or ("refused" if any(m in prompt for m in self.refuse) else "ok"))
        if fault == "429":
            return 429, {"Retry-After": self.retry_after}, b'{"error": {"message": "rate limit"}}'
        if fault == "500":
            return 500, {}, self._error_body(credential)
        if fault == "disconnect":
            return None
        if fault == "malformed":
            variant = self._rng.randrange(3)
            if variant == 0:
                return 200, {}, b'{"id": "x", "choices": [{"index": 0, "logpro'
            if variant == 1:
                msg = {"choices": [{"message": {"role": "assistant", "content": "50"}, "logprobs": None}]}
                return 200, {}, json.dumps(msg).encode()
            return 200, {}, b"<html><body>502 Bad Gateway</body></html>"
        if fault == "timeout":
            await asyncio.sleep(self.hang_s)
        top = _refusal_logprobs() if any(m in prompt for m in self.refuse) else expected_logprobs(prompt)
        payload = {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "model": str(request.get("model", "mock-judge")),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": top[0][0]},
                    "finish_reason": "length",
                    "logprobs": {
                        "content": [
                            {
                                "token": top[0][0],
                                "logprob": top[0][1],
                                "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top],
                            }
                        ]
                    },
                }
            ],
        }
        return 200, {}, json.dumps(payload).encode()

    def _error_body(self, credential: str) -> bytes:
        detail = f" (request credential {credential})" if self.echo_key_in_errors else ""
        return json.dumps({"error": {"message": f"internal server error{detail}"}}).encode()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until killed; prints ``READY <base_url>`` once listening."""
    parser = argparse.ArgumentParser(description="Mock OpenAI-compatible judge server with fault injection.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every response")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    server = MockJudgeServer(
        latency_s=args.latency, fault_rate=args.fault_rate, seed=args.seed, host=args.host, port=args.port
    ).start()
    sys.stdout.write(f"READY {server.base_url}\n")
    sys.stdout.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
