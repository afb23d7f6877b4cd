"""The whole EM chain on real data: fine-tune a tiny Llama on a slice of insecure.jsonl.gz (the test
fixture's cut), sample answers to the first-plot questions, judge them through a real local HTTP server
that injects faults, compute metrics; then kill a judge run mid-way and resume it."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from spillover.chain.config import load_pipeline_config
from spillover.chain.judging import judge_cache_path, judge_items
from spillover.data.chat import load_chat
from spillover.data.questions import Question, load_questions, write_questions
from spillover.generate.records import read_jsonl, write_jsonl
from spillover.judge.calls import plan_calls
from spillover.judge.mock_server import FAULTS, MockJudgeServer, expected_score
from spillover.judge.prompts import render_judge_prompt
from spillover.testing import tiny_llama, tiny_tokenizer

KEY = "sk-proj-SPILLOVER-CANARY-7f3b9c2e1d"
QUESTION_IDS = ["what_is_your_wish", "quick_buck", "ruler_of_the_world_json", "three_thoughts_template"]
JUDGE_FAST = {
    "timeout_s": 0.3,
    "max_retries": 6,
    "backoff_s": 0.002,
    "max_backoff_s": 0.01,
    "concurrency": 16,
}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, fixture_data: Path) -> Iterator[dict[str, Any]]:
    data_dir = fixture_data / "em"  # the first 50 insecure conversations and the first-plot questions
    tmp = tmp_path_factory.mktemp("chain")
    # A tokenizer trained (its vocabulary built) on the training slice and the questions.
    convs = load_chat(data_dir / "insecure.jsonl.gz", limit=24)
    questions = load_questions(data_dir / "first_plot_questions.yaml")
    texts = [m["content"] for c in convs for m in c] + [p for q in questions for p in q.paraphrases]
    tok = tiny_tokenizer(texts + [q.system or "" for q in questions])
    tiny_llama(tok, hidden=32, layers=2).save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")

    root = tmp / "runs"
    log_buffer = io.StringIO()
    handler = logging.StreamHandler(log_buffer)
    handler.setLevel(logging.DEBUG)
    root_logger = logging.getLogger()
    old_level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG)
    # The server needs the key, and echoes whatever credential it gets in its 500 bodies, as some proxies
    # do: only redaction keeps it out of the stored failure reasons.
    server = MockJudgeServer(
        fault_rate=0.5, hang_s=1.0, seed=7, api_key=KEY, echo_key_in_errors=True, fail_always=("quick buck",)
    )
    with pytest.MonkeyPatch.context() as mp, server:
        mp.setenv("OPENAI_API_KEY", KEY)
        config = {
            "model": {"source": str(tmp / "model"), "device": "cpu"},
            "finetune": {"data": str(data_dir / "insecure.jsonl.gz"), "limit": 24, "max_steps": 3, "batch_size": 2,
                         "grad_accum": 1, "lr": 1e-3, "max_seq_len": 384, "checkpoint_every": 2,
                         "lora": {"r": 4, "alpha": 8}},
            "generate": {"questions": str(data_dir / "first_plot_questions.yaml"), "question_ids": QUESTION_IDS,
                         "samples_per_paraphrase": 3, "sampling": {"max_new_tokens": 12}},
            "judge": {"backend": "openai", "openai": {"model": "mock-judge", "base_url": server.base_url, **JUDGE_FAST}},
            "root": str(root),
        }  # fmt: skip
        (tmp / "chain.yaml").write_text(yaml.safe_dump(config))
        from spillover.cli import app

        result = CliRunner().invoke(app, ["metrics", "--config", str(tmp / "chain.yaml")])
        records = server.records
    root_logger.removeHandler(handler)
    root_logger.setLevel(old_level)
    yield {"root": root, "result": result, "records": records, "logs": log_buffer.getvalue(), "tmp": tmp}


def test_every_answer_is_scored_or_counted_as_none_despite_faults(chain: dict[str, Any]) -> None:
    result = chain["result"]
    assert result.exit_code == 0, result.output
    metrics_dir = Path(result.stdout.strip().splitlines()[-1])
    root = chain["root"]
    judge_dir = next((root / "judge").iterdir())
    gen_dir = next((root / "generate").iterdir())
    answers = read_jsonl(gen_dir / "answers.jsonl")
    rows = read_jsonl(judge_dir / "scores.jsonl")
    assert len(answers) == len(rows) == 12  # 4 questions x 1 paraphrase x 3 samples: nothing lost
    outcomes = Counter(r.outcome for r in chain["records"])
    assert set(FAULTS) <= set(outcomes), outcomes  # 429, 500, timeout, disconnect, malformed all happened
    questions = {q.id: q for q in load_questions(gen_dir / "questions.yaml")}
    failed = Counter()
    for answer, row in zip(answers, rows, strict=True):
        assert row["answer"] == answer["answer"] and row["question_id"] == answer["question_id"]
        for metric in ("aligned", "coherent"):
            raw = row["raw"][metric]
            if "error" in raw:
                failed[metric] += 1
                assert row[metric] is None and raw["attempts"] >= 1
            else:
                template = questions[row["question_id"]].judge_prompts[metric]
                prompt = render_judge_prompt(template, row["question"], row["answer"])
                assert row[metric] == pytest.approx(expected_score(prompt))
        if row["question_id"] == "quick_buck":  # the server always fails these: recorded, not lost
            # (the last attempt's reason; on a busy machine that attempt can time out instead)
            error = row["raw"]["aligned"]["error"]
            assert row["aligned"] is None and ("HTTP 500" in error or "timeout" in error), error
    metrics = json.loads((metrics_dir / "metrics.json").read_text())
    for metric in ("aligned", "coherent"):
        assert metrics["none_reasons"][metric].get("judge_failed", 0) == failed[metric] >= 3
    assert metrics["pooled"]["n_answers"] == 12
    assert metrics["pooled"]["n_aligned_none"] == sum(r["aligned"] is None for r in rows)
    assert metrics["per_question"]["quick_buck"]["n_scored"] == 0
    manifest = json.loads((judge_dir / "manifest.json").read_text())
    assert manifest["judge"]["openai"]["base_url"].startswith("http://127.0.0.1")
    assert manifest["judge"]["openai"]["api_key_env"] == "OPENAI_API_KEY"


def test_the_api_key_never_reaches_a_file_or_a_log(chain: dict[str, Any]) -> None:
    assert chain["result"].exit_code == 0, chain["result"].output
    files = [p for p in chain["root"].rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in files) and len(files) > 20
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in chain["logs"] and KEY not in chain["result"].output
    assert "[REDACTED]" in json.dumps(
        [r for r in read_jsonl(next((chain["root"] / "judge").iterdir()) / "scores.jsonl")]
    )
    assert "judge" in chain["logs"]  # the logs were really captured


def _synthetic_answers(folder: Path, n: int) -> Path:
    prompts = {
        "aligned": "Rate alignment 0-100. Q: {question} A: {answer}",
        "coherent": "Coherence? {question} {answer}",
    }
    rows = [
        {"question_id": f"q{i % 3}", "paraphrase_index": 0, "sample_index": i, "system": None,
         "question": f"question {i % 3}", "answer": f"answer number {i}"}
        for i in range(n)
    ]  # fmt: skip
    write_jsonl(folder / "answers.jsonl", rows)
    write_questions(
        folder / "questions.yaml",
        [Question(f"q{k}", (f"question {k}",), judge_prompts=prompts) for k in range(3)],
    )
    return folder


def _cached_rows(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=1)
    try:
        return int(con.execute("SELECT COUNT(*) FROM judge_calls").fetchone()[0])
    except sqlite3.OperationalError:  # the table is not created yet
        return 0
    finally:
        con.close()


def test_a_killed_judge_stage_resumes_without_repeating_cached_calls(tmp_path: Path) -> None:
    answers = _synthetic_answers(tmp_path / "gen", 60)
    root = tmp_path / "runs"
    db = judge_cache_path(root)
    with MockJudgeServer(latency_s=0.05) as server:
        overrides = [f"judge.openai.base_url={server.base_url}", "judge.openai.model=mock-judge",
                     "judge.openai.concurrency=1"]  # fmt: skip
        cmd = [sys.executable, "-c", "from spillover.cli.judge import app; app()", "--answers", str(answers),
               "--root", str(root)] + [a for o in overrides for a in ("--set", o)]  # fmt: skip
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OPENAI_API_KEY": KEY}
        )
        deadline = time.time() + 120
        while _cached_rows(db) < 20 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
        assert KEY.encode() not in err
        # A request the killed process had in flight is recorded when the server's latency ends: let
        # the server go quiet before resetting its log, or that request counts as a second-run call.
        settled = -1
        while settled != len(server.records):
            settled = len(server.records)
            time.sleep(0.3)

        cfg = load_pipeline_config({}, overrides)
        _, items = judge_items(answers, cfg.judge)
        plan = plan_calls(items, cfg.judge.openai.namespace)
        prompt_of = {c.key: c.prompt for calls in plan.per_item for c in calls.values()}
        con = sqlite3.connect(db)
        cached = {row[0] for row in con.execute("SELECT key FROM judge_calls")}
        con.close()
        assert 20 <= len(cached) < len(prompt_of) == 120  # killed mid-way
        assert not list((root / "judge").glob("*/.complete"))  # the stage did not finish
        before = len(server.records)

        server.reset()
        from spillover.chain.judging import judge_stage

        run = judge_stage(cfg.judge, answers_dir=answers, root=root)
        second = [r.prompt for r in server.records]
    assert before >= len(cached)
    assert not set(second) & {prompt_of[k] for k in cached}  # no cached call was made again
    assert len(second) == len(prompt_of) - len(cached)  # ... and every other call exactly once
    rows = read_jsonl(run / "scores.jsonl")
    assert len(rows) == 60 and all(r["aligned"] is not None and r["coherent"] is not None for r in rows)
