from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from judge_helpers import FAST, PROMPTS, items

from spillover.judge import get_judge
from spillover.judge.cache import JudgeCache
from spillover.judge.mock_server import FAULTS, MockJudgeServer, expected_logprobs, expected_score
from spillover.judge.openai import JudgeAPIError, MalformedResponse, OpenAIJudgeConfig, parse_chat_logprobs
from spillover.judge.prompts import render_judge_prompt

KEY = "sk-test-Zq8RkWp3CANARY"


def _expected(item, metric: str) -> float | None:
    return expected_score(render_judge_prompt(PROMPTS[metric], item.question, item.answer))


def test_scores_equal_the_em_rule_on_the_served_logprobs(server: MockJudgeServer) -> None:
    judge = get_judge("openai", base_url=server.base_url, model="mock-judge", **FAST)
    its = items(12)
    scores = judge.score(its)
    for item, score in zip(its, scores, strict=True):
        assert score.aligned == pytest.approx(_expected(item, "aligned"))
        assert score.coherent == pytest.approx(_expected(item, "coherent"))
        prompt = render_judge_prompt(PROMPTS["aligned"], item.question, item.answer)
        served = expected_logprobs(prompt)
        stored = score.raw["aligned"]["top_logprobs"]
        assert [t for t, _ in stored] == [t for t, _ in served]
        assert [lp for _, lp in stored] == pytest.approx([lp for _, lp in served])
        assert score.raw["aligned"]["model"] == "mock-judge"
    body = server.records[0].body
    assert (body["max_tokens"], body["temperature"], body["logprobs"], body["top_logprobs"]) == (
        1,
        0.0,
        True,
        20,
    )
    assert body["messages"] == [{"role": "user", "content": body["messages"][0]["content"]}]
    # The answer's braces reach the judge verbatim.
    assert "{with braces}" in body["messages"][0]["content"]


def test_every_fault_is_retried_or_recorded_as_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    its = items(40, marker_at={3: "POISON", 17: "POISON", 25: "REJECT", 30: "REFUSE"})
    with MockJudgeServer(fault_rate=0.5, hang_s=1.0, seed=1, api_key=KEY, echo_key_in_errors=True) as srv:
        judge = get_judge("openai", base_url=srv.base_url, model="mock-judge", concurrency=16, **FAST)
        scores = judge.score(its)
        records = srv.records
    outcomes = Counter(r.outcome for r in records)
    assert set(FAULTS) <= set(outcomes), outcomes  # every kind of fault really happened
    failed = 0
    for item, score in zip(its, scores, strict=True):
        for metric in ("aligned", "coherent"):
            raw, value = score.raw[metric], getattr(score, metric)
            if "error" in raw:
                failed += 1
                assert value is None and raw["error"]
                assert KEY not in raw["error"]
            elif "REFUSE" in item.answer:
                assert value is None and raw["top_logprobs"][0][0] == "REFUSAL"
            else:
                assert value == pytest.approx(_expected(item, metric))
    assert judge.last_stats is not None and judge.last_stats.failed == failed
    # Every attempt is counted. An attempt that got no response may not have reached the server (a connect
    # timeout on a loaded machine), so the server's count lies between the answered and all attempts.
    stats = judge.last_stats
    assert stats.requests - stats.no_response <= len(records) <= stats.requests
    # Poisoned answers were tried 1 + max_retries times, the 400 (content filter) only once.
    tries = 1 + FAST["max_retries"]
    assert [scores[i].raw[m]["attempts"] for i in (3, 17) for m in ("aligned", "coherent")] == [tries] * 4
    assert sum(r.outcome == "reject" for r in records) == 2
    assert 6 <= failed  # 4 poisoned calls + 2 rejected calls at least


def test_bad_key_aborts_with_a_redacted_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_KEY", KEY)
    with MockJudgeServer(api_key="sk-the-right-one", echo_key_in_errors=True) as srv:
        judge = get_judge("openai", base_url=srv.base_url, model="m", api_key_env="JUDGE_KEY", **FAST)
        with pytest.raises(JudgeAPIError) as err:
            judge.score(items(3))
    message = str(err.value)
    assert "401" in message and "$JUDGE_KEY" in message and "[REDACTED]" in message
    assert KEY not in message


def test_azure_style_header_and_api_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    with MockJudgeServer(api_key=KEY, auth_header="api-key", api_version="2024-10-21") as srv:
        azure = {"api_key_env": "AZURE_OPENAI_API_KEY", "auth_header": "api-key", **FAST}
        base = srv.base_url + "/openai/deployments/gpt-4o"
        scores = get_judge("openai", base_url=base, model="gpt-4o", api_version="2024-10-21", **azure).score(
            items(2)
        )
        assert all(s.aligned is not None for s in scores)
        with pytest.raises(JudgeAPIError, match="404"):
            get_judge("openai", base_url=base, model="gpt-4o", **azure).score(items(2))


def test_cache_answers_repeats_and_duplicates_without_calls(server: MockJudgeServer, tmp_path: Path) -> None:
    its = items(10) + items(10)  # every answer twice
    # Counts requests exactly, so no attempt may time out and be retried on a busy machine.
    patient = {**FAST, "timeout_s": 30.0}
    with JudgeCache(tmp_path / "c.sqlite") as cache:
        judge = get_judge("openai", base_url=server.base_url, model="m", cache=cache, **patient)
        first = judge.score(its)
        assert len(server.records) == 20  # 10 unique answers x 2 metrics
        server.reset()
        again = get_judge("openai", base_url=server.base_url, model="m", cache=cache, **patient).score(its)
        assert server.records == []
        assert [(s.aligned, s.coherent) for s in again] == [(s.aligned, s.coherent) for s in first]
        # Another judge model is another cache namespace.
        get_judge("openai", base_url=server.base_url, model="other", cache=cache, **patient).score(its[:1])
        assert len(server.records) == 2
    with JudgeCache(tmp_path / "c.sqlite") as reopened:
        assert len(reopened) == 22


def test_failures_are_not_cached_so_a_rerun_retries_them(tmp_path: Path) -> None:
    its = items(4, marker_at={0: "POISON"})
    with MockJudgeServer() as srv, JudgeCache(tmp_path / "c.sqlite") as cache:
        judge = get_judge("openai", base_url=srv.base_url, model="m", cache=cache, **FAST)
        assert judge.score(its)[0].aligned is None
        srv.reset()
        judge.score(its)
        assert {r.prompt for r in srv.records} == {
            render_judge_prompt(PROMPTS[m], its[0].question, its[0].answer) for m in PROMPTS
        }


def test_a_dead_endpoint_aborts_after_consecutive_failures(server: MockJudgeServer) -> None:
    judge = get_judge(
        "openai", base_url=server.base_url, model="m", max_consecutive_failures=3, concurrency=1, **FAST
    )
    with pytest.raises(JudgeAPIError, match="3 judge calls in a row failed"):
        judge.score(items(10, marker_at={i: "POISON" for i in range(10)}))


def test_score_works_inside_a_running_event_loop(server: MockJudgeServer) -> None:
    judge = get_judge("openai", base_url=server.base_url, model="m", **FAST)

    async def inside() -> list:
        return judge.score(items(2))

    assert len(asyncio.run(inside())) == 2


def test_config_refuses_credentials_in_the_url_and_bad_values() -> None:
    with pytest.raises(ValueError, match="credential"):
        OpenAIJudgeConfig(base_url="https://x.example/v1?api_key=sk-abc")
    with pytest.raises(ValueError, match="top_logprobs"):
        OpenAIJudgeConfig(top_logprobs=25)
    assert OpenAIJudgeConfig(base_url="http://h/v1/").url == "http://h/v1/chat/completions"
    assert OpenAIJudgeConfig(model="a").namespace != OpenAIJudgeConfig(model="b").namespace
    mock = OpenAIJudgeConfig(model="a", base_url="http://127.0.0.1:8000/v1")
    assert mock.namespace != OpenAIJudgeConfig(model="a").namespace
    assert mock.namespace == OpenAIJudgeConfig(model="a", base_url="http://127.0.0.1:8000/v1/").namespace


def test_parse_rejects_bodies_without_logprobs() -> None:
    good = {
        "choices": [
            {
                "message": {"content": "7"},
                "logprobs": {
                    "content": [
                        {"token": "7", "logprob": -0.1, "top_logprobs": [{"token": "7", "logprob": -0.1}]}
                    ]
                },
            }
        ]
    }
    assert parse_chat_logprobs(good)["top_logprobs"] == [["7", -0.1]]
    for bad in ({}, {"choices": []}, {"choices": [{"logprobs": None}]}, [1, 2]):
        with pytest.raises(MalformedResponse):
            parse_chat_logprobs(bad)
