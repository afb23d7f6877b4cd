from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from spillover.pipeline.executors import LocalExecutor, NodeEvent
from spillover.pipeline.graph import Graph, GraphError, NodeRef, fn_ref
from spillover.pipeline.progress_view import ProgressView
from spillover.rundir import is_complete, run_stage

HERE = Path(__file__).resolve().parent


# Stage functions used by the graphs below. They live at module level so Ray workers import them by name
# (the Ray fixture puts this folder on the workers' PYTHONPATH).


def _trace(config: dict[str, Any], what: str) -> None:
    with open(config["trace"], "a") as fh:
        fh.write(f"{what} {config['name']} {os.getpid()}\n")


def add_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    def fn(out: Path) -> None:
        _trace(config, "run")
        total = config["value"] + sum(int((p / "value.txt").read_text()) for p in _folders(inputs))
        (out / "value.txt").write_text(str(total))

    return run_stage("add", config, fn, root=root, inputs=inputs)


def flaky_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    def fn(out: Path) -> None:
        _trace(config, "run")
        flag = Path(config["flag"])
        if not flag.exists():
            flag.write_text("failed once")
            if config.get("crash"):
                os._exit(3)  # a worker that dies, not an exception
            raise RuntimeError("injected transient failure")
        (out / "value.txt").write_text(str(config["value"]))

    return run_stage("flaky", config, fn, root=root, inputs=inputs)


def broken_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    def fn(out: Path) -> None:
        _trace(config, "run")
        print("about to fail")
        raise ValueError(f"injected permanent failure in {config['name']}")

    return run_stage("broken", config, fn, root=root, inputs=inputs)


def not_a_stage(config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path:
    return root


def _folders(inputs: dict[str, Any]) -> list[Path]:
    return [v for v in inputs.values() if isinstance(v, Path)]


def _runs(trace: Path) -> list[str]:
    return [line.split()[1] for line in trace.read_text().splitlines()] if trace.exists() else []


def _diamond(tmp: Path, *, broken: bool = False) -> tuple[Graph, dict[str, NodeRef]]:
    trace = str(tmp / "trace.txt")
    g = Graph()
    a = g.add("add", add_stage, {"name": "a", "value": 1, "trace": trace})
    b = g.add("add", add_stage, {"name": "b", "value": 10, "trace": trace}, inputs={"a": a})
    if broken:
        c = g.add("broken", broken_stage, {"name": "c", "trace": trace}, inputs={"a": a})
    else:
        c = g.add("add", add_stage, {"name": "c", "value": 100, "trace": trace}, inputs={"a": a})
    d = g.add("add", add_stage, {"name": "d", "value": 1000, "trace": trace}, inputs={"b": b, "c": c})
    e = g.add("add", add_stage, {"name": "e", "value": 5, "trace": trace}, inputs={"b": b})
    return g, {"a": a, "b": b, "c": c, "d": d, "e": e}


def test_identical_nodes_are_merged_and_inputs_must_exist(tmp_path: Path) -> None:
    g = Graph()
    a1 = g.add("add", add_stage, {"name": "a", "value": 1, "trace": "t"})
    a2 = g.add("add", "test_executors:add_stage", {"value": 1, "trace": "t", "name": "a"})
    assert a1 == a2 and len(g) == 1
    b = g.add("add", add_stage, {"name": "b", "value": 1, "trace": "t"}, inputs={"a": a1})
    assert g[b.key].deps == (a1.key,)
    with pytest.raises(GraphError, match="not in this graph"):
        g.add("add", add_stage, {"name": "c"}, inputs={"x": NodeRef("nope", "add")})
    with pytest.raises(GraphError, match="importable"):
        fn_ref(lambda c, i, r: r)
    with pytest.raises(GraphError, match="module:function"):
        g.add("add", "no_colon", {})


def test_local_runs_dependencies_first_and_reuses_finished_nodes(tmp_path: Path) -> None:
    g, refs = _diamond(tmp_path)
    events: list[NodeEvent] = []
    results = LocalExecutor().run(g, tmp_path / "runs", on_event=events.append)
    assert all(r.status == "done" and not r.reused for r in results.values())
    d = results[refs["d"].key].path
    assert d is not None and (d / "value.txt").read_text() == str(1000 + (10 + 1) + (100 + 1))
    assert sorted(_runs(tmp_path / "trace.txt")) == ["a", "b", "c", "d", "e"]
    assert [e.status for e in events].count("running") == 5
    time.sleep(0.1)  # "reused" is judged from the completion marker's age
    again = LocalExecutor().run(g, tmp_path / "runs")
    assert all(r.reused for r in again.values())
    assert len(_runs(tmp_path / "trace.txt")) == 5
    assert {k: r.path for k, r in again.items()} == {k: r.path for k, r in results.items()}


def test_local_retries_a_failed_node_and_logs_every_attempt(tmp_path: Path) -> None:
    g = Graph()
    cfg = {"name": "f", "value": 7, "trace": str(tmp_path / "trace.txt"), "flag": str(tmp_path / "flag")}
    f = g.add("flaky", flaky_stage, cfg)
    assert LocalExecutor(max_retries=0).run(g, tmp_path / "r0")[f.key].status == "failed"
    (tmp_path / "flag").unlink()
    res = LocalExecutor(max_retries=1).run(g, tmp_path / "r1", log_dir=tmp_path / "logs")[f.key]
    assert res.status == "done" and res.attempts == 2 and res.path is not None and is_complete(res.path)
    text = res.log.read_text()
    assert "=== attempt 1" in text and "=== attempt 2" in text and "injected transient failure" in text


def test_permanent_failure_skips_only_downstream_nodes(tmp_path: Path) -> None:
    g, refs = _diamond(tmp_path, broken=True)
    results = LocalExecutor(max_retries=1).run(g, tmp_path / "runs", log_dir=tmp_path / "logs")
    status = {name: results[ref.key].status for name, ref in refs.items()}
    assert status == {"a": "done", "b": "done", "c": "failed", "d": "skipped", "e": "done"}
    c = results[refs["c"].key]
    assert c.attempts == 2 and c.error is not None and "injected permanent failure in c" in c.error
    log = c.log.read_text()
    assert "about to fail" in log and "Traceback" in log
    assert "upstream broken" in (results[refs["d"].key].error or "")
    assert _runs(tmp_path / "trace.txt").count("c") == 2


def test_a_stage_that_returns_no_finished_folder_fails(tmp_path: Path) -> None:
    g = Graph()
    n = g.add("bad", not_a_stage, {})
    res = LocalExecutor().run(g, tmp_path)[n.key]
    assert res.status == "failed" and "not a finished stage folder" in (res.error or "")


def test_progress_view_counts_cells(tmp_path: Path) -> None:
    g, refs = _diamond(tmp_path, broken=True)
    groups = {
        "left": [refs["a"].key, refs["b"].key, refs["e"].key],
        "right": [refs["a"].key, refs["c"].key, refs["d"].key],
    }
    view = ProgressView(g, groups, live=False)
    LocalExecutor().run(g, tmp_path / "runs", on_event=view)
    assert view.cell_counts() == {"done": 1, "failed": 1}
    counts = view.stage_counts()
    assert counts["add"]["done"] == 3 and counts["add"]["skipped"] == 1 and counts["broken"]["failed"] == 1
    assert "1 done" in view.summary() and "1 failed" in view.summary()
