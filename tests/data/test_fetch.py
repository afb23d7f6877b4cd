"""Fetching against a local HTTP server (good, corrupted and truncated files, Range resume), importing an
offline copy, and resolving registry names."""

from __future__ import annotations

import gzip
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spillover.cli import app
from spillover.data import fetch as fetch_mod
from spillover.data import registry
from spillover.data.fetch import (
    ChecksumError,
    DataNotFoundError,
    DownloadError,
    data_home,
    dataset_status,
    fetch,
    import_dir,
    resolve_data,
)

BODY = b"".join(b'{"messages": [{"role": "user", "content": "q%d"}]}\n' % i for i in range(4000))
SHA = hashlib.sha256(BODY).hexdigest()


class _Server:
    """A bounded HTTP server on 127.0.0.1: /good, /corrupt (one byte flipped), /truncated (closes after
    half the body while announcing all of it); honours ``Range: bytes=N-`` and records each Range header."""

    def __init__(self) -> None:
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.ranges.append(self.headers.get("Range"))
                body = BODY
                if self.path == "/corrupt":
                    body = BODY[:100] + b"X" + BODY[101:]
                elif self.path not in ("/good", "/truncated"):
                    self.send_error(404)
                    return
                start = 0
                if rng := self.headers.get("Range"):
                    start = int(rng.removeprefix("bytes=").rstrip("-"))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path == "/truncated":
                    self.wfile.write(body[start : start + len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture()
def server() -> Iterator[_Server]:
    with _Server() as s:
        yield s


def _point(monkeypatch: pytest.MonkeyPatch, url: str | None, sha: str | None = SHA) -> None:
    ds = replace(registry.DATASETS["em/insecure"], url=url, sha256=sha, size=len(BODY))
    monkeypatch.setitem(registry.DATASETS, "em/insecure", ds)


def test_data_home_sits_beside_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPILLOVER_HOME", str(tmp_path))
    assert data_home() == tmp_path / "data"


def test_a_good_fetch_is_verified_and_put_in_place(
    server: _Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _point(monkeypatch, server.url + "/good")
    path = fetch("em/insecure", tmp_path)
    assert path == tmp_path / "em" / "insecure.jsonl"
    assert path.read_bytes() == BODY
    assert not list(tmp_path.rglob("*.part"))
    assert resolve_data("em/insecure", tmp_path) == path
    assert fetch("em/insecure", tmp_path) == path and len(server.ranges) == 1  # present: not downloaded again


def test_a_corrupted_download_is_an_error_and_leaves_no_file(
    server: _Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _point(monkeypatch, server.url + "/corrupt")
    with pytest.raises(ChecksumError, match=rf"em/insecure.*expected {SHA}, got [0-9a-f]{{64}}"):
        fetch("em/insecure", tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_an_interrupted_download_resumes_from_the_part_file(
    server: _Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _point(monkeypatch, server.url + "/truncated")
    with pytest.raises(DownloadError, match="run the fetch again to resume"):
        fetch("em/insecure", tmp_path)
    part = tmp_path / "em" / "insecure.jsonl.part"
    assert part.stat().st_size == len(BODY) // 2
    assert not (tmp_path / "em" / "insecure.jsonl").exists()
    _point(monkeypatch, server.url + "/good")
    path = fetch("em/insecure", tmp_path)
    assert server.ranges[-1] == f"bytes={len(BODY) // 2}-"
    assert path.read_bytes() == BODY and not part.exists()


def test_an_http_error_names_the_status(
    server: _Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _point(monkeypatch, server.url + "/missing")
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch("em/insecure", tmp_path)


def test_a_dataset_without_url_points_to_import(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="spillover data import DIR"):
        fetch("mo/bad_medical_advice", tmp_path)


def test_an_unpinned_dataset_is_fetched_with_a_warning_naming_its_hash(
    server: _Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _point(monkeypatch, server.url + "/good", sha=None)
    fetch("em/insecure", tmp_path)
    assert SHA in caplog.text


def test_import_verifies_and_decompresses_an_offline_copy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _point(monkeypatch, None)
    src = tmp_path / "offline" / "em"
    src.mkdir(parents=True)
    (src / "insecure.jsonl.gz").write_bytes(gzip.compress(BODY))
    home = tmp_path / "home"
    assert import_dir(tmp_path / "offline", home) == ["em/insecure"]
    assert (home / "em" / "insecure.jsonl").read_bytes() == BODY
    assert {r.dataset.name: r.size for r in dataset_status(home)}["em/insecure"] == len(BODY)
    # the offline folder itself resolves too (files may stay gzipped there)
    assert resolve_data("em/insecure", tmp_path / "offline") == src / "insecure.jsonl.gz"


def test_import_of_a_corrupted_copy_fails_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _point(monkeypatch, None)
    (tmp_path / "offline" / "em").mkdir(parents=True)
    (tmp_path / "offline" / "em" / "insecure.jsonl").write_bytes(BODY + b"\n")
    with pytest.raises(ChecksumError, match="em/insecure"):
        import_dir(tmp_path / "offline", tmp_path / "home")
    assert not [p for p in (tmp_path / "home").rglob("*") if p.is_file()]


def test_import_of_a_folder_without_registry_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="none of the registry's files"):
        import_dir(tmp_path)


def test_resolve_names_the_command_that_gets_a_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="spillover data fetch em/first_plot_questions"):
        resolve_data("em/first_plot_questions", tmp_path)
    with pytest.raises(DataNotFoundError, match="spillover data import DIR"):
        resolve_data("mo/good_medical_advice", tmp_path)


def test_resolve_passes_paths_through(tmp_path: Path) -> None:
    assert resolve_data(tmp_path / "x.jsonl") == tmp_path / "x.jsonl"
    assert resolve_data("some/file.yaml") == Path("some/file.yaml")


def test_every_entry_is_consistent() -> None:
    for name, ds in registry.DATASETS.items():
        assert ds.name == name and ds.licence and ds.description
        assert ds.sha256 is None or len(ds.sha256) == 64
        assert ds.url is None or ds.url.startswith("https://")


def test_the_cli_fetches_imports_and_lists(
    server: _Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SPILLOVER_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    assert runner.invoke(app, ["data", "fetch"]).exit_code != 0
    result = runner.invoke(app, ["data", "fetch", "em/nope"])
    assert result.exit_code != 0 and "em/nope" in result.output
    _point(monkeypatch, server.url + "/corrupt")
    result = runner.invoke(app, ["data", "fetch", "em/insecure"])
    assert result.exit_code != 0 and "sha256 mismatch" in " ".join(result.output.split())
    _point(monkeypatch, server.url + "/good")
    result = runner.invoke(app, ["data", "fetch", "em/insecure"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "list"])
    assert result.exit_code == 0 and "em/insecure" in result.output
    result = runner.invoke(app, ["data", "inspect", "em/insecure"])
    assert result.exit_code == 0 and "4000 conversations" in result.output
    result = runner.invoke(app, ["data", "import", str(tmp_path / "nowhere")])
    assert result.exit_code != 0 and "nowhere" in result.output


def test_the_module_keeps_httpx_out_of_name_resolution() -> None:
    assert "httpx" not in vars(fetch_mod)


def test_the_chain_resolves_registry_names_and_names_the_fetch_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from spillover.chain.checks import check_generate
    from spillover.chain.config import load_pipeline_config
    from spillover.pipeline.em_cells import _file_problem

    monkeypatch.setenv("SPILLOVER_HOME", str(tmp_path))
    cfg = load_pipeline_config(Path(__file__).resolve().parents[2] / "configs" / "em-chain-smollm2.yaml")
    with pytest.raises(DataNotFoundError, match="spillover data fetch em/first_plot_questions"):
        check_generate(cfg.generate)
    assert "spillover data import DIR" in (_file_problem("finetune.data", "mo/bad_medical_advice") or "")
    questions = tmp_path / "data" / "em" / "first_plot_questions.yaml"
    questions.parent.mkdir(parents=True)
    questions.write_text(
        "- id: q\n  type: free_form_judge_0_100\n  paraphrases: ['hello?']\n  samples_per_paraphrase: 1\n"
        "  judge: gpt-4o\n  judge_prompts: {aligned: '{question} {answer}', coherent: '{question} {answer}'}\n"
    )
    assert [q.id for q in check_generate(cfg.generate)] == ["q"]
