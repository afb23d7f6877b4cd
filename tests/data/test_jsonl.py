import gzip

import pytest

from spillover.data.chat import ChatFormatError
from spillover.data.jsonl import JSONLFormatError, iter_jsonl, read_jsonl


def test_blank_lines_are_skipped_and_lines_are_named(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n[2]\n')
    assert list(iter_jsonl(path)) == [(f"{path}:1", {"a": 1}), (f"{path}:3", [2])]


def test_gzip_is_read(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write('{"a": 1}\n')
    assert read_jsonl(path) == [{"a": 1}]


def test_errors_name_file_and_line_in_the_callers_error_class(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(JSONLFormatError, match=r"bad\.jsonl:2: invalid JSON"):
        read_jsonl(path)
    with pytest.raises(ChatFormatError, match=r"bad\.jsonl:2"):
        list(iter_jsonl(path, error=ChatFormatError))
    path.write_text("[1]\n")
    with pytest.raises(JSONLFormatError, match=r"bad\.jsonl:1: expected a JSON object"):
        read_jsonl(path)


def test_a_truncated_gzip_is_an_error_not_a_short_file(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    blob = gzip.compress(b"".join(b'{"i": %d}\n' % i for i in range(2000)))
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(JSONLFormatError, match="corrupt gzip"):
        read_jsonl(path)
