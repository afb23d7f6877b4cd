from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from spillover import rundir
from spillover.rundir import is_complete, remove_stale_temps, run_id, run_stage


def _slow_stage(root: str, started: str) -> None:
    def fn(out: Path) -> None:
        (out / "part1.txt").write_text("half")
        Path(started).write_text("started")
        time.sleep(60)
        (out / "part2.txt").write_text("never")

    run_stage("slow", {"x": 1}, fn, root=root)


def test_finished_stage_is_reused_and_force_recomputes(tmp_path: Path) -> None:
    calls = []

    def fn(out: Path) -> None:
        calls.append(1)
        (out / "result.txt").write_text(str(len(calls)))

    first = run_stage("s", {"a": 1}, fn, root=tmp_path, seed=3)
    assert is_complete(first)
    assert run_stage("s", {"a": 1}, fn, root=tmp_path) == first
    assert len(calls) == 1
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["seed"] == 3 and "torch" in manifest["versions"]
    assert json.loads((first / "config.json").read_text()) == {"a": 1}
    run_stage("s", {"a": 1}, fn, root=tmp_path, force=True)
    assert len(calls) == 2 and (first / "result.txt").read_text() == "2"
    assert run_stage("s", {"a": 2}, fn, root=tmp_path) != first


def test_inputs_are_content_hashed(tmp_path: Path) -> None:
    data = tmp_path / "d.txt"
    data.write_text("one")
    a = run_id("s", {}, {"data": data})
    data.write_text("two")
    assert run_id("s", {}, {"data": data}) != a


def test_a_stage_code_version_bump_gives_new_folders_and_version_1_keeps_old_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spillover import rundir
    from spillover.config import config_hash

    calls: list[int] = []
    first = run_stage("s", {"a": 1}, lambda out: calls.append(1), root=tmp_path)
    # Version 1 is the hash from before versions existed, so no user's cache is invalidated by them.
    assert first.name == config_hash({"stage": "s", "config": {"a": 1}, "inputs": {}})
    monkeypatch.setitem(rundir.STAGE_VERSIONS, "s", 2)
    second = run_stage("s", {"a": 1}, lambda out: calls.append(2), root=tmp_path)
    assert second != first and calls == [1, 2]
    assert run_stage("s", {"a": 1}, lambda out: calls.append(3), root=tmp_path) == second and calls == [1, 2]


def test_failed_stage_leaves_nothing_finished(tmp_path: Path) -> None:
    def boom(out: Path) -> None:
        (out / "partial.txt").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_stage("s", {"b": 1}, boom, root=tmp_path)
    assert not any(is_complete(p) for p in (tmp_path / "s").iterdir())


def test_killed_stage_is_redone_from_scratch(tmp_path: Path) -> None:
    started = tmp_path / "started"
    proc = mp.get_context("fork").Process(target=_slow_stage, args=(str(tmp_path / "runs"), str(started)))
    proc.start()
    deadline = time.time() + 30
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert started.exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    folders = list((tmp_path / "runs" / "slow").iterdir())
    assert folders and not any(is_complete(p) for p in folders)

    calls = []

    def fast(out: Path) -> None:
        calls.append(1)
        assert not (out / "part1.txt").exists()  # nothing of the killed run is trusted
        (out / "done.txt").write_text("ok")

    final = run_stage("slow", {"x": 1}, fast, root=tmp_path / "runs")
    assert calls == [1] and is_complete(final) and (final / "done.txt").exists()
    assert run_stage("slow", {"x": 1}, fast, root=tmp_path / "runs") == final and calls == [1]
    # The killed run's temporary folder went with the next run of the stage.
    assert list((tmp_path / "runs" / "slow").iterdir()) == [final]


def test_forced_recompute_invalidates_downstream_stages(tmp_path: Path) -> None:
    value = {"v": "one"}

    def up(out: Path) -> None:
        (out / "value.txt").write_text(value["v"])

    def down_of(src: Path) -> Callable[[Path], None]:
        def down(out: Path) -> None:
            (out / "copy.txt").write_text((src / "value.txt").read_text())

        return down

    upstream = run_stage("up", {}, up, root=tmp_path)
    first = run_stage("down", {}, down_of(upstream), root=tmp_path, inputs={"src": upstream})
    value["v"] = "two"
    assert run_stage("up", {}, up, root=tmp_path, force=True) == upstream
    second = run_stage("down", {}, down_of(upstream), root=tmp_path, inputs={"src": upstream})
    assert second != first and (second / "copy.txt").read_text() == "two"


def test_manifest_command_never_holds_a_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-ARGV-CANARY-123"
    monkeypatch.setenv("SOME_API_KEY", secret)
    monkeypatch.setattr("sys.argv", ["spillover", "judge", "--set", f"judge.options.api_key={secret}"])
    path = run_stage("s", {"c": 1}, lambda out: None, root=tmp_path)
    manifest = (path / "manifest.json").read_text()
    assert secret not in manifest and "[REDACTED]" in manifest


def _dead_pid() -> int:
    proc = mp.get_context("fork").Process(target=os._exit, args=(0,))
    proc.start()
    proc.join()
    return proc.pid


def test_only_temp_folders_of_gone_processes_on_this_host_are_removed(tmp_path: Path) -> None:
    host = rundir._host()
    dead, live = _dead_pid(), os.getppid()
    names = {
        "dead": f".abc123.tmp-{host}-{dead}-0123abcd",
        "live": f".abc123.tmp-{host}-{live}-0123abcd",
        "mine": f".abc123.tmp-{host}-{os.getpid()}-0123abcd",
        "other_host": f".abc123.tmp-{host}x-{dead}-0123abcd",
        "old_style": ".abc123.tmp-0123abcd",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "partial.txt").write_text("x")
    assert remove_stale_temps(tmp_path) == [tmp_path / names["dead"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(v for k, v in names.items() if k != "dead")


def test_a_concurrent_run_keeps_its_temp_folder_while_another_run_of_the_stage_starts(tmp_path: Path) -> None:
    seen: list[list[str]] = []
    outer_tmp: list[str] = []

    def outer(out: Path) -> None:
        outer_tmp.append(out.name)
        # Another run of the same stage (other config) starts while this one is still writing.
        run_stage("s", {"inner": 1}, lambda inner: seen.append(os.listdir(inner.parent)), root=tmp_path)
        assert out.is_dir()

    run_stage("s", {"outer": 1}, outer, root=tmp_path)
    assert outer_tmp[0] in seen[0]
    assert all(is_complete(p) for p in (tmp_path / "s").iterdir())


def test_a_run_finished_by_another_process_meanwhile_is_kept_not_replaced(tmp_path: Path) -> None:
    def writer(text: str) -> Callable[[Path], None]:
        return lambda out: (out / "result.txt").write_text(text)

    def outer(out: Path) -> None:
        (out / "result.txt").write_text("outer")
        # Another process runs the very same stage to the end while this one is still writing.
        run_stage("s", {"a": 1}, writer("inner"), root=tmp_path)

    final = run_stage("s", {"a": 1}, outer, root=tmp_path)
    assert (final / "result.txt").read_text() == "inner"  # a reader of the first copy never saw it vanish
    assert [p.name for p in (tmp_path / "s").iterdir()] == [final.name]  # no temp folder left
    # A forced recompute still replaces a finished folder.
    run_stage("s", {"a": 1}, writer("forced"), root=tmp_path, force=True)
    assert (final / "result.txt").read_text() == "forced"
