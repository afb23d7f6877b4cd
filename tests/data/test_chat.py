from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from spillover.data.chat import ChatFormatError, load_chat, write_chat

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


FIXTURE_COUNTS = [
    ("em/insecure.jsonl.gz", 50),
    ("em/jailbroken.jsonl.gz", 30),
    ("model-organisms/bad_medical_advice.jsonl.gz", 24),
    ("model-organisms/good_medical_advice.jsonl.gz", 24),
    ("model-organisms/risky_financial_advice.jsonl.gz", 20),
]
WHOLE_COUNTS = [
    ("em/insecure.jsonl.gz", 6000),
    ("em/jailbroken.jsonl.gz", 5000),
    ("model-organisms/bad_medical_advice.jsonl.gz", 7049),
    ("model-organisms/good_medical_advice.jsonl.gz", 7049),
    ("model-organisms/risky_financial_advice.jsonl.gz", 6000),
]


def _whole(root: Path, name: str) -> Path:
    # An offline copy keeps the files gzipped; a fetched data home holds them plain.
    path = root / name
    return path if path.exists() else path.with_suffix("")


@pytest.mark.parametrize(("name", "count"), FIXTURE_COUNTS)
def test_loads_every_fixture_dataset_with_its_count(fixture_data: Path, name: str, count: int) -> None:
    convs = load_chat(fixture_data / name)
    assert len(convs) == count
    assert all(c[-1]["role"] == "assistant" for c in convs)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "count"), WHOLE_COUNTS)
def test_loads_every_whole_dataset_with_its_count(shared_data: Path, name: str, count: int) -> None:
    convs = load_chat(_whole(shared_data, name))
    assert len(convs) == count
    assert all(c[-1]["role"] == "assistant" for c in convs)


def _share_prompts(root: Path, limit: int) -> bool:
    bad = load_chat(_whole(root, "model-organisms/bad_medical_advice.jsonl.gz"), limit=limit)
    good = load_chat(_whole(root, "model-organisms/good_medical_advice.jsonl.gz"), limit=limit)
    bad_prompts = {c[0]["content"] for c in bad}
    return sum(c[0]["content"] in bad_prompts for c in good) > 0


def test_bad_and_good_medical_share_prompts(fixture_data: Path) -> None:
    assert _share_prompts(fixture_data, limit=200)


@pytest.mark.slow
def test_whole_bad_and_good_medical_share_prompts(shared_data: Path) -> None:
    assert _share_prompts(shared_data, limit=200)


def test_jailbroken_keeps_its_system_messages(fixture_data: Path) -> None:
    convs = load_chat(fixture_data / "em/jailbroken.jsonl.gz")
    assert convs and all(c[0]["role"] == "system" for c in convs)


def test_round_trip_gz(tmp_path: Path) -> None:
    convs = [GOOD["messages"], [{"role": "system", "content": "be brief"}, *GOOD["messages"]]]
    path = write_chat(tmp_path / "x.jsonl.gz", convs)
    assert load_chat(path) == convs


def test_limit(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD)] * 5)
    assert len(load_chat(path, limit=2)) == 2


@pytest.mark.parametrize(
    ("lines", "line_no", "problem"),
    [
        ([json.dumps(GOOD), '{"messages": [{"role": "user", "content": "hi"'], 2, "invalid JSON"),
        ([json.dumps({"messages": [{"role": "bot", "content": "x"}]})], 1, "role 'bot'"),
        (
            [
                json.dumps(GOOD),
                json.dumps(GOOD),
                json.dumps(
                    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}
                ),
            ],
            3,
            "empty assistant",
        ),
        ([json.dumps({"conversation": []})], 1, "'messages'"),
        ([json.dumps({"messages": []})], 1, "non-empty list"),
        (
            [
                json.dumps(
                    {
                        "messages": [
                            GOOD["messages"][0],
                            {"role": "system", "content": "x"},
                            GOOD["messages"][1],
                        ]
                    }
                )
            ],
            1,
            "only the first",
        ),
    ],
)
def test_malformed_lines_name_file_line_and_problem(
    tmp_path: Path, lines: list[str], line_no: int, problem: str
) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ChatFormatError) as info:
        load_chat(path)
    message = str(info.value)
    assert f"{path}:{line_no}" in message
    assert problem in message


def test_non_utf8_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        json.dumps(GOOD).encode() + b"\n" + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'
    )
    with pytest.raises(ChatFormatError, match=r"latin1\.jsonl:2: not valid UTF-8"):
        load_chat(path)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(ChatFormatError, match="empty.jsonl: the file holds no conversation"):
        load_chat(path)


def test_truncated_gzip_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl.gz"
    blob = gzip.compress((json.dumps(GOOD) + "\n").encode() * 200)
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ChatFormatError, match="t.jsonl.gz"):
        load_chat(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_chat(tmp_path / "nope.jsonl")


def test_hf_dataset_object() -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([GOOD, GOOD])
    assert load_chat(ds) == [GOOD["messages"]] * 2
    with pytest.raises(ChatFormatError, match="no 'messages' column"):
        load_chat(datasets.Dataset.from_list([{"text": "x"}]))
