"""Everything that needs Ray, on one private instance (2 CPUs, 127.0.0.1 only) started once for the module."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from spillover.pipeline.executors import LocalExecutor
from spillover.pipeline.graph import Graph, Resources
from spillover.pipeline.ray_executor import RayExecutor
from spillover.pipeline.sweep import load_sweep, plan_sweep, run_sweep
from spillover.rundir import is_complete

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))  # the stage functions below live in the sibling test modules

from test_executors import _diamond, _runs, add_stage, flaky_stage  # noqa: E402
from test_sweep import _spec  # noqa: E402


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    ray = pytest.importorskip("ray")
    from spillover.pipeline.ray_executor import start_local_ray

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), old) if p)
    try:
        start_local_ray(num_cpus=2)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


# ---- executors ----


def test_ray_instance_listens_on_loopback_only(ray_address: str) -> None:
    import ray

    assert ray_address.startswith("127.0.0.1:")
    psutil = pytest.importorskip("psutil")
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert ray.cluster_resources().get("CPU") == 2
    procs = psutil.Process().children(recursive=True)
    assert procs, "the Ray processes should be children of this process"
    addresses = set()
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        addresses.update(c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN)
    assert addresses and all(_loopback(a) for a in addresses), addresses


def test_ray_gives_the_same_folders_as_local(ray_address: str, tmp_path: Path) -> None:
    g, refs = _diamond(tmp_path)
    local = LocalExecutor().run(g, tmp_path / "local")
    ray_res = RayExecutor().run(g, tmp_path / "ray")
    assert {k: (r.status, r.path.name if r.path else None) for k, r in ray_res.items()} == {
        k: (r.status, r.path.name if r.path else None) for k, r in local.items()
    }
    d = ray_res[refs["d"].key].path
    assert d is not None and (d / "value.txt").read_text() == "1112"
    assert len({line.split()[2] for line in (tmp_path / "trace.txt").read_text().splitlines()}) >= 2


def test_ray_retries_a_dead_worker_and_isolates_a_permanent_failure(ray_address: str, tmp_path: Path) -> None:
    g, refs = _diamond(tmp_path, broken=True)
    crash = g.add(
        "flaky",
        flaky_stage,
        {
            "name": "w",
            "value": 3,
            "trace": str(tmp_path / "trace.txt"),
            "flag": str(tmp_path / "flag"),
            "crash": True,
        },
    )
    results = RayExecutor(max_retries=1).run(g, tmp_path / "runs", log_dir=tmp_path / "logs")
    w = results[crash.key]
    assert w.status == "done" and w.attempts == 2
    assert "lost its worker" in w.log.read_text()
    status = {name: results[ref.key].status for name, ref in refs.items()}
    assert status == {"a": "done", "b": "done", "c": "failed", "d": "skipped", "e": "done"}
    assert results[refs["c"].key].attempts == 2


def test_ray_fails_a_node_no_machine_can_hold(ray_address: str, tmp_path: Path) -> None:
    g = Graph()
    trace = str(tmp_path / "trace.txt")
    ok = g.add("add", add_stage, {"name": "cpu", "value": 1, "trace": trace})
    gpu = g.add(
        "add", add_stage, {"name": "gpu", "value": 1, "trace": trace}, resources=Resources(num_gpus=1)
    )
    results = RayExecutor().run(g, tmp_path / "runs")
    assert results[ok.key].status == "done"
    assert results[gpu.key].status == "failed" and "GPU" in (results[gpu.key].error or "")
    assert _runs(Path(trace)) == ["cpu"]
    assert json.loads((results[ok.key].path / "config.json").read_text())["name"] == "cpu"  # type: ignore[operator]


# ---- sweeps ----


def test_ray_sweep_table_equals_the_local_one(ray_address: str, tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    local = run_sweep(spec, LocalExecutor(), root=tmp_path / "local", out=tmp_path / "out-local")
    on_ray = run_sweep(spec, RayExecutor(), root=tmp_path / "ray", out=tmp_path / "out-ray")
    assert on_ray.table.equals(local.table)
    pids = {line.split()[-1] for line in (tmp_path / "trace.txt").read_text().splitlines()}
    assert str(os.getpid()) in pids and len(pids) >= 2  # the Ray run executed in worker processes


def test_ray_retries_a_dead_worker_and_reports_a_failing_cell(ray_address: str, tmp_path: Path) -> None:
    spec = _spec(tmp_path, fail_on="b/none", flaky=str(tmp_path / "flag"), crash=True)
    result = run_sweep(spec, RayExecutor(max_retries=1), root=tmp_path / "runs", out=tmp_path / "out")
    status = dict(
        zip(
            zip(result.table["dataset"], result.table["filter"], result.table["seed"], strict=False),
            result.table["status"],
            strict=False,
        )
    )
    assert {k for k, v in status.items() if v != "done"} == {("b", "none", 0), ("b", "none", 1)}
    retried = [
        r for r in result.nodes.values() if r.stage == "train" and r.attempts == 2 and r.status == "done"
    ]
    assert len(retried) == 1 and "lost its worker" in retried[0].log.read_text()


def test_killed_ray_sweep_resumes_only_unfinished_cells(ray_address: str, tmp_path: Path) -> None:
    sweep_file = tmp_path / "sweep.yaml"
    spec = _spec(tmp_path, sleep=0.3)
    sweep_file.write_text(
        yaml.safe_dump({"name": spec.name, "pipeline": spec.pipeline, "base": spec.base, "grid": spec.grid})
    )
    root = tmp_path / "runs"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p),
    }
    cmd = [
        sys.executable,
        "-c",
        "from spillover.cli.sweep import app; app()",
        str(sweep_file),
        "--executor",
        "ray",
        "--address",
        ray_address,
        "--root",
        str(root),
        "--out",
        str(tmp_path / "out"),
    ]
    errlog = (tmp_path / "driver.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=errlog, stderr=subprocess.STDOUT, start_new_session=True)

    def complete(stage: str) -> set[str]:
        folder = root / f"toy_{stage}"
        return {p.name for p in folder.iterdir() if is_complete(p)} if folder.is_dir() else set()

    deadline = time.time() + 120
    while len(complete("metrics")) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    def snapshot() -> tuple[dict[str, set[str]], int]:
        trace = tmp_path / "trace.txt"
        lines = len(trace.read_text().splitlines()) if trace.exists() else 0
        return {stage: complete(stage) for stage in ("score", "train", "metrics")}, lines

    # The Ray workers are not in the driver's process group: a task already running finishes (or is
    # reaped by the raylet) a moment after the kill. Wait until nothing changes for 2 s (each toy stage
    # sleeps 0.3 s) so that the snapshot holds what the resumed sweep will find.
    before, n_lines = snapshot()
    quiet_since, deadline = time.time(), time.time() + 30
    while time.time() - quiet_since < 2.0 and time.time() < deadline:
        time.sleep(0.2)
        now = snapshot()
        if now != (before, n_lines):
            (before, n_lines), quiet_since = now, time.time()
    assert 2 <= len(before["metrics"]) < 8, "the sweep should have been killed part-way"

    result = run_sweep(spec, RayExecutor(), root=root, out=tmp_path / "out")
    assert set(result.table["status"]) == {"done"}
    resumed = [line.split() for line in (tmp_path / "trace.txt").read_text().splitlines()[n_lines:]]
    for stage, done in before.items():  # only what had not finished runs again, once
        assert sum(r[0] == stage for r in resumed) == len(complete(stage)) - len(done), stage
    finished = result.table[result.table["run_id"].isin(before["metrics"])]
    assert len(finished) == len(before["metrics"])
    for r in finished.itertuples():  # a cell finished before the kill runs no stage at all
        assert not [
            x for x in resumed if x[1:4] in ([r.dataset, str(r.seed), r.filter], [r.dataset, "-", "-"])
        ]


# ---- the real thing: the organism sweep, local vs Ray ----


@pytest.mark.slow
def test_organism_sweep_is_identical_locally_and_on_ray(ray_address: str, tmp_path: Path) -> None:
    spec = load_sweep(REPO / "configs" / "sweeps" / "organism_tiny.yaml")
    local = run_sweep(spec, LocalExecutor(), root=tmp_path / "local", out=tmp_path / "out-local")
    on_ray = run_sweep(spec, RayExecutor(), root=tmp_path / "ray", out=tmp_path / "out-ray")
    assert not local.failed and not on_ray.failed
    assert len(local.table) == 8
    assert on_ray.table.equals(local.table)
    # Not a table of zeros: the cells differ, and the random filter halved the training data.
    assert local.table["coherent"].nunique() > 1
    assert set(local.table[local.table["filter.method"] == "random"]["n_train"]) == {32}
    assert Counter(n.stage for n in plan_sweep(spec).graph)["organism"] == 1
