"""Executors run a stage graph: sequentially in this process, or as Ray tasks on one machine or a cluster.

Both share one interface and one scheduler, so they differ only in where a node runs:

* :class:`LocalExecutor` (the default, what CI uses) runs ready nodes one at a time in this process.
* :class:`RayExecutor` (``pip install 'spillover[ray]'``) submits every ready node as a Ray task with the
  node's resources (GPUs for fine-tuning and generation, CPUs for judging and geometry). It starts a
  private Ray instance bound to 127.0.0.1, or attaches to a running cluster (``address="auto"`` or
  ``"ray://host:10001"``); stage folders land in the shared run root either way.

Semantics common to both:

* A node whose folder is already finished is reused (its stage function returns at once).
* A failed node is retried up to ``max_retries`` times (a Python exception, or a Ray worker that died).
  When it still fails, every node downstream of it is skipped and reported; independent nodes go on.
* Each node appends its log (its ``logging`` records, stdout, stderr and any traceback) to
  ``log_dir/<stage>/<key>.log``, one header per attempt.

Python::

    from spillover.pipeline.executors import LocalExecutor, RayExecutor
    results = LocalExecutor().run(graph, root)                       # sequential
    results = RayExecutor(num_cpus=2, max_retries=2).run(graph, root)  # private loopback Ray instance
    results = RayExecutor(address="auto").run(graph, root)           # the cluster this node belongs to
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import socket
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

from rich.console import Console
from rich.live import Live
from rich.table import Table

from spillover.pipeline.graph import Graph, Resources, StageNode, load_fn
from spillover.rundir import COMPLETE_MARKER, default_root, is_complete

__all__ = [
    "Executor",
    "LocalExecutor",
    "NodeEvent",
    "NodeOutcome",
    "NodeResult",
    "ProgressView",
    "RayExecutor",
    "execute_node",
    "start_local_ray",
]

log = logging.getLogger(__name__)

EventStatus = Literal["running", "done", "retrying", "failed", "skipped"]


class NodeOutcome(NamedTuple):
    """What one attempt of a node returned (built in the worker, so plain values only)."""

    path: str | None
    """The finished stage folder, or None when the attempt failed."""
    error: str | None
    """``"ExceptionType: message"`` of a failed attempt."""
    wall_s: float
    reused: bool
    """The folder was already finished before this attempt (nothing was computed)."""
    host: str


@dataclass(frozen=True)
class NodeResult:
    """The final state of one node after a run."""

    key: str
    stage: str
    status: Literal["done", "failed", "skipped"]
    path: Path | None
    """The finished stage folder (``status == "done"`` only)."""
    error: str | None
    """Why it failed, or which upstream failure skipped it."""
    log: Path
    """The node's log (absent when the node never ran)."""
    attempts: int
    wall_s: float
    """Wall time of the last attempt."""
    reused: bool
    """Done without computing anything: the folder was finished before this run."""


@dataclass(frozen=True)
class NodeEvent:
    """A change of state of one node, passed to ``on_event`` callbacks (e.g. :class:`ProgressView`)."""

    key: str
    stage: str
    status: EventStatus
    attempt: int
    error: str | None = None
    reused: bool = False
    wall_s: float = 0.0


class Executor(Protocol):
    """Runs every node of a graph (dependencies first) and reports each node's result."""

    def run(
        self,
        graph: Graph,
        root: str | Path | None = None,
        *,
        log_dir: str | Path | None = None,
        on_event: Callable[[NodeEvent], None] | None = None,
    ) -> dict[str, NodeResult]: ...


def _log_path(log_dir: Path, node: StageNode) -> Path:
    return log_dir / node.stage / f"{node.key}.log"


@contextlib.contextmanager
def _capture(log_file: Path) -> Iterator[Any]:
    """Send logging records, stdout and stderr to ``log_file`` while the block runs."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a", encoding="utf-8") as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root_logger = logging.getLogger()
        old_level = root_logger.level
        root_logger.addHandler(handler)
        if old_level == logging.NOTSET or old_level > logging.INFO:
            root_logger.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                yield fh
        finally:
            root_logger.removeHandler(handler)
            root_logger.setLevel(old_level)


def execute_node(
    fn: str,
    config: dict[str, Any],
    inputs: dict[str, Any],
    root: str,
    log_file: str,
    attempt: int,
    header: str,
    threads: int | None = None,
) -> NodeOutcome:
    """Run one attempt of a node (in this process or a Ray worker) and never raise.

    Args:
        fn: ``"module:function"`` of the stage function.
        config: its config dict.
        inputs: resolved inputs (upstream folders as ``Path``).
        root: run root.
        log_file: the node's log; this attempt is appended.
        attempt: 1 for the first try.
        header: a line naming the node, written before the attempt's output.
        threads: set torch's thread count to this and free memory afterwards (Ray workers: the node's
            CPUs); None (in-process runs) leaves both alone.
    """
    host = socket.gethostname()
    start = time.time()
    with _capture(Path(log_file)) as fh:
        fh.write(
            f"=== attempt {attempt}: {header} on {host} (pid {os.getpid()}) at {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        )
        fh.flush()
        try:
            stage_fn = load_fn(fn)
            if threads is not None and "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(max(1, threads))
            out = stage_fn(dict(config), dict(inputs), Path(root))
            if not isinstance(out, (str, Path)) or not is_complete(out):
                raise RuntimeError(
                    f"stage function {fn} returned {out!r}, which is not a finished stage folder; "
                    "a stage function must return the folder run_stage gave it"
                )
            path = Path(out)
            # A folder finished by this attempt has its marker written after we started (the margin
            # covers the kernel's coarse file clock); only the progress label depends on it.
            reused = (path / COMPLETE_MARKER).stat().st_mtime < start - 0.05
            wall = time.time() - start
            fh.write(f"=== {'reused' if reused else 'finished'} in {wall:.1f}s -> {path}\n")
            return NodeOutcome(str(path), None, wall, reused, host)
        except Exception as exc:
            wall = time.time() - start
            traceback.print_exc(file=fh)
            fh.write(f"=== failed after {wall:.1f}s\n")
            return NodeOutcome(None, f"{type(exc).__name__}: {exc}", wall, False, host)
        finally:
            if threads is not None and "torch" in sys.modules:
                # A Ray worker runs many stages: free the last one's model before the next (GPU memory above all).
                gc.collect()
                torch = sys.modules["torch"]
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()


class _Scheduler:
    """Node states, retries and failure propagation shared by every executor."""

    def __init__(
        self,
        graph: Graph,
        log_dir: Path,
        max_retries: int,
        on_event: Callable[[NodeEvent], None] | None,
    ) -> None:
        self.graph = graph
        self.log_dir = log_dir
        self.max_retries = max_retries
        self.on_event = on_event
        self.state: dict[str, str] = {node.key: "pending" for node in graph}
        self.attempts: Counter[str] = Counter()
        self.outputs: dict[str, Path] = {}
        self.results: dict[str, NodeResult] = {}
        self._order = {node.key: i for i, node in enumerate(graph)}

    def _emit(self, event: NodeEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def ready(self) -> list[StageNode]:
        """Pending nodes whose inputs are all done, in graph order."""
        return [
            self.graph[key]
            for key, st in self.state.items()
            if st == "pending" and all(self.state[d] == "done" for d in self.graph[key].deps)
        ]

    def running(self) -> list[str]:
        return [k for k, st in self.state.items() if st == "running"]

    def finished(self) -> bool:
        return not any(st in ("pending", "running") for st in self.state.values())

    def start(self, node: StageNode) -> dict[str, Any]:
        """Mark the node running and return the keyword arguments of :func:`execute_node`."""
        self.state[node.key] = "running"
        self.attempts[node.key] += 1
        attempt = self.attempts[node.key]
        self._emit(NodeEvent(node.key, node.stage, "running", attempt))
        return {
            "fn": node.fn,
            "config": node.config,
            "inputs": self.graph.resolve_inputs(node.key, self.outputs),
            "root": "",
            "log_file": str(_log_path(self.log_dir, node)),
            "attempt": attempt,
            "header": f"stage {node.stage} node {node.key} ({node.fn})",
        }

    def complete(self, key: str, outcome: NodeOutcome) -> None:
        node = self.graph[key]
        attempt = self.attempts[key]
        logfile = _log_path(self.log_dir, node)
        if outcome.path is not None:
            self.state[key] = "done"
            self.outputs[key] = Path(outcome.path)
            self.results[key] = NodeResult(
                key,
                node.stage,
                "done",
                Path(outcome.path),
                None,
                logfile,
                attempt,
                outcome.wall_s,
                outcome.reused,
            )
            self._emit(NodeEvent(key, node.stage, "done", attempt, None, outcome.reused, outcome.wall_s))
            return
        if attempt <= self.max_retries:
            log.warning("%s %s failed (attempt %d, retrying): %s", node.stage, key, attempt, outcome.error)
            self.state[key] = "pending"
            self._emit(NodeEvent(key, node.stage, "retrying", attempt, outcome.error, False, outcome.wall_s))
            return
        log.error(
            "%s %s failed after %d attempt(s): %s (log: %s)", node.stage, key, attempt, outcome.error, logfile
        )
        self.state[key] = "failed"
        self.results[key] = NodeResult(
            key, node.stage, "failed", None, outcome.error, logfile, attempt, outcome.wall_s, False
        )
        self._emit(NodeEvent(key, node.stage, "failed", attempt, outcome.error, False, outcome.wall_s))
        for down in self.graph.downstream(key):
            if self.state[down] == "pending":
                dnode = self.graph[down]
                reason = f"skipped: upstream {node.stage} {key} failed"
                self.state[down] = "skipped"
                self.results[down] = NodeResult(
                    down, dnode.stage, "skipped", None, reason, _log_path(self.log_dir, dnode), 0, 0.0, False
                )
                self._emit(NodeEvent(down, dnode.stage, "skipped", 0, reason))

    def fail_now(self, node: StageNode, error: str) -> None:
        """Fail a node without running it (e.g. no machine can ever hold its resources)."""
        self.attempts[node.key] = self.max_retries + 1
        self.state[node.key] = "running"
        self.complete(node.key, NodeOutcome(None, error, 0.0, False, ""))

    def ordered_results(self) -> dict[str, NodeResult]:
        return {k: self.results[k] for k in sorted(self.results, key=self._order.__getitem__)}


def _prepare(root: str | Path | None, log_dir: str | Path | None) -> tuple[Path, Path]:
    root_path = Path(root) if root is not None else default_root()
    root_path.mkdir(parents=True, exist_ok=True)
    logs = Path(log_dir) if log_dir is not None else root_path / "_logs"
    return root_path.resolve(), logs.resolve()


class LocalExecutor:
    """Runs nodes one at a time in this process, following each sweep cell to the end before the next."""

    def __init__(self, max_retries: int = 0) -> None:
        """
        Args:
            max_retries: extra attempts for a node that raises (0: fail at once, the CI default).
        """
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.max_retries = max_retries

    def run(
        self,
        graph: Graph,
        root: str | Path | None = None,
        *,
        log_dir: str | Path | None = None,
        on_event: Callable[[NodeEvent], None] | None = None,
    ) -> dict[str, NodeResult]:
        """Run ``graph``; returns each node's result in graph order."""
        root_path, logs = _prepare(root, log_dir)
        sched = _Scheduler(graph, logs, self.max_retries, on_event)
        while not sched.finished():
            ready = sched.ready()
            if not ready:  # pragma: no cover - the scheduler marks every blocked node skipped
                raise RuntimeError("no node is ready but the graph is not finished")
            node = ready[0]
            kwargs = sched.start(node)
            kwargs["root"] = str(root_path)
            sched.complete(node.key, execute_node(**kwargs))
        return sched.ordered_results()


@contextlib.contextmanager
def _loopback_ray() -> Iterator[None]:
    """Make ``ray.init`` in this block use 127.0.0.1 as this node's address (and send no usage stats).

    Ray < 3 picks the node's address from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``: off, every server it
    starts (GCS, raylet, workers, agents) binds 127.0.0.1 instead of the routable address, and a driver
    attaching to such an instance finds its raylet. The flag is read when ray is imported, so the
    imported constant is switched too, for this block only.
    """
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        ray_constants: Any = None
        with contextlib.suppress(ImportError):  # a Ray without the module: the environment is all we set
            import ray._private.ray_constants as ray_constants
        saved_flag = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
        if saved_flag is not None:
            ray_constants.ENABLE_RAY_CLUSTER = False
        try:
            yield
        finally:
            if saved_flag is not None:
                ray_constants.ENABLE_RAY_CLUSTER = saved_flag
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _is_loopback(address: str) -> bool:
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def start_local_ray(
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    *,
    object_store_mb: int = 256,
    runtime_env: Mapping[str, Any] | None = None,
) -> None:
    """Start a private Ray instance in this process, reachable on 127.0.0.1 only.

    It never joins an existing cluster (``address="local"``), starts no dashboard and sends no usage
    statistics. Its processes die with this one.

    Args:
        num_cpus: CPUs Ray may schedule (default: all).
        num_gpus: GPUs Ray may schedule (default: those it detects).
        object_store_mb: shared-memory object store size; stages pass paths, so it stays small.
        runtime_env: passed to ``ray.init`` (e.g. ``{"env_vars": {...}}``).
    """
    import ray

    with _loopback_ray():
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            object_store_memory=object_store_mb * 2**20,
            runtime_env=dict(runtime_env) if runtime_env else None,
        )
    ip = ray.util.get_node_ip_address()
    if ip not in ("127.0.0.1", "::1"):
        log.warning("the local Ray instance advertises %s, not the loopback address", ip)


def _ray_options(res: Resources, name: str) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "num_cpus": res.num_cpus,
        "num_gpus": res.num_gpus,
        "max_retries": 0,  # the scheduler retries, so attempts are counted and logged the same everywhere
        "retry_exceptions": False,
        "name": name,
    }
    if res.memory_gb is not None:
        opts["memory"] = int(res.memory_gb * 2**30)
    if res.custom:
        opts["resources"] = dict(res.custom)
    return opts


def _unschedulable(res: Resources, nodes: Sequence[Mapping[str, Any]]) -> str | None:
    """Why no alive Ray node could ever run a task needing ``res`` (None when one can)."""
    need = {"CPU": res.num_cpus, "GPU": res.num_gpus, **res.custom}
    if res.memory_gb is not None:
        need["memory"] = res.memory_gb * 2**30
    for node in nodes:
        have = node.get("Resources", {})
        if node.get("Alive", True) and all(have.get(k, 0.0) >= v for k, v in need.items() if v > 0):
            return None
    best = {k: max((n.get("Resources", {}).get(k, 0.0) for n in nodes), default=0.0) for k in need}
    return f"no Ray node can hold {need} (largest per node: {best}); lower the stage's resources or add such nodes"


class RayExecutor:
    """Runs nodes as Ray tasks: a private loopback instance, or an existing cluster."""

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        max_retries: int = 2,
        runtime_env: Mapping[str, Any] | None = None,
        autoscaling: bool = False,
        max_inflight: int | None = None,
    ) -> None:
        """
        Args:
            address: None starts a private instance (127.0.0.1 only) for this run and stops it after;
                ``"auto"`` or ``"host:6379"`` / ``"ray://host:10001"`` attaches to a running cluster.
                If Ray is already initialised in this process, that instance is used as is.
            num_cpus: CPUs of the private instance (default: all cores).
            num_gpus: GPUs of the private instance (default: detected).
            max_retries: extra attempts for a failed node (exception or dead worker).
            runtime_env: Ray runtime environment for the workers (e.g. ``{"env_vars": {"HF_HOME": ...}}``).
            autoscaling: the cluster grows on demand, so do not fail nodes that no current machine fits
                (and do not bound the tasks in flight).
            max_inflight: tasks submitted at once (default: the cluster's CPUs). Ready stages wait in
                graph order, so each cell runs to its end before later cells start: finished cells
                accumulate early and an interrupted sweep loses little.
        """
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.max_retries = max_retries
        self.runtime_env = dict(runtime_env) if runtime_env else None
        self.autoscaling = autoscaling
        if max_inflight is not None and max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.max_inflight = max_inflight

    def _connect(self) -> bool:
        """Connect or start Ray; True when this call owns the connection (and must shut it down)."""
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError(
                "the Ray executor needs Ray: pip install 'spillover[ray]' (or use the local executor)"
            ) from exc
        if ray.is_initialized():
            return False
        if self.address is None:
            start_local_ray(self.num_cpus, self.num_gpus, runtime_env=self.runtime_env)
        else:
            with _loopback_ray() if _is_loopback(self.address) else contextlib.nullcontext():
                ray.init(
                    address=self.address,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    runtime_env=self.runtime_env,
                )
        return True

    def run(
        self,
        graph: Graph,
        root: str | Path | None = None,
        *,
        log_dir: str | Path | None = None,
        on_event: Callable[[NodeEvent], None] | None = None,
    ) -> dict[str, NodeResult]:
        """Run ``graph`` on Ray; returns each node's result in graph order.

        The run root must be a folder every Ray node sees at the same path (a shared filesystem on a
        cluster); the driver only passes paths.
        """
        root_path, logs = _prepare(root, log_dir)
        owns = self._connect()
        import ray

        inflight: dict[Any, str] = {}
        try:
            sched = _Scheduler(graph, logs, self.max_retries, on_event)
            remote = ray.remote(execute_node)
            ray_nodes = ray.nodes()
            limit = self.max_inflight or (
                len(graph) if self.autoscaling else max(1, int(ray.cluster_resources().get("CPU", 1)))
            )
            while not sched.finished():
                for node in sched.ready()[: max(0, limit - len(inflight))]:
                    why = None if self.autoscaling else _unschedulable(node.resources, ray_nodes)
                    if why is not None:
                        sched.fail_now(node, f"ResourceError: {node.stage} needs {why}")
                        continue
                    kwargs = sched.start(node)
                    kwargs["root"] = str(root_path)
                    kwargs["threads"] = max(1, math.floor(node.resources.num_cpus))
                    ref = remote.options(**_ray_options(node.resources, f"{node.stage}:{node.key}")).remote(
                        **kwargs
                    )
                    inflight[ref] = node.key
                if not inflight:
                    if not sched.finished() and not sched.ready():  # pragma: no cover - defensive
                        raise RuntimeError("no node is ready or running but the graph is not finished")
                    continue
                done, _ = ray.wait(list(inflight), num_returns=1)
                for ref in done:
                    key = inflight.pop(ref)
                    try:
                        outcome: NodeOutcome = ray.get(ref)
                    except Exception as exc:  # the worker died, was killed (OOM) or the task was cancelled
                        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                        logfile = _log_path(logs, graph[key])
                        logfile.parent.mkdir(parents=True, exist_ok=True)
                        with logfile.open("a", encoding="utf-8") as fh:
                            fh.write(f"=== attempt {sched.attempts[key]} lost its worker: {exc}\n")
                        outcome = NodeOutcome(None, error, 0.0, False, "")
                    sched.complete(key, outcome)
            return sched.ordered_results()
        except BaseException:
            for ref in list(inflight):
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise
        finally:
            if owns:
                ray.shutdown()


_CELL_COLUMNS = ("done", "running", "failed", "pending")
_NODE_COLUMNS = ("done", "reused", "running", "retrying", "failed", "skipped", "pending")


class ProgressView:
    """A live table of nodes per stage and of sweep cells (done / running / failed); an ``on_event`` callback.

    Without a terminal (or with ``SPILLOVER_QUIET``) it logs one line per finished, failed or skipped node.
    """

    def __init__(
        self,
        graph: Graph,
        groups: Mapping[str, Sequence[str]] | None = None,
        *,
        live: bool | None = None,
        title: str = "sweep",
    ) -> None:
        """
        Args:
            graph: the graph being run.
            groups: cell id -> keys of that cell's nodes (for the per-cell counts).
            live: draw a live table (default: when stderr is a terminal and SPILLOVER_QUIET is unset).
            title: the table's title.
        """
        from spillover.progress import enabled

        self.graph = graph
        self.groups = {k: list(v) for k, v in (groups or {}).items()}
        self.title = title
        self.state: dict[str, str] = {n.key: "pending" for n in graph}
        self.reused: set[str] = set()
        self.live_enabled = enabled() if live is None else live
        self.console = Console(file=sys.stderr)
        self._live: Live | None = None

    def cell_status(self, cell: str) -> str:
        """``done`` (all nodes done), ``failed`` (a node failed or was skipped), ``running`` or ``pending``."""
        states = [self.state[k] for k in self.groups[cell]]
        if any(s in ("failed", "skipped") for s in states):
            return "failed"
        if all(s == "done" for s in states):
            return "done"
        if any(s in ("running", "retrying", "done") for s in states):
            return "running"
        return "pending"

    def cell_counts(self) -> Counter[str]:
        return Counter(self.cell_status(c) for c in self.groups)

    def stage_counts(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {s: Counter() for s in self.graph.stages}
        for node in self.graph:
            st = self.state[node.key]
            out[node.stage][st] += 1
            if st == "done" and node.key in self.reused:
                out[node.stage]["reused"] += 1
        return out

    def table(self) -> Table:
        """The current counts as a rich table."""
        table = Table(title=self.title)
        table.add_column("")
        for col in _NODE_COLUMNS:
            table.add_column(col, justify="right")
        for stage, counts in self.stage_counts().items():
            table.add_row(stage, *(str(counts.get(c, 0)) for c in _NODE_COLUMNS))
        if self.groups:
            cells = self.cell_counts()
            row = {c: str(cells.get(c, 0)) for c in _CELL_COLUMNS}
            table.add_row(
                "[bold]cells", row["done"], "", row["running"], "", row["failed"], "", row["pending"]
            )
        return table

    def summary(self) -> str:
        """One line: cells and nodes by state."""
        cells = self.cell_counts()
        nodes = Counter(self.state.values())
        cell_part = ", ".join(f"{cells.get(c, 0)} {c}" for c in _CELL_COLUMNS) if self.groups else ""
        node_part = ", ".join(f"{n} {s}" for s, n in sorted(nodes.items()))
        return f"cells: {cell_part} | nodes: {node_part}" if cell_part else f"nodes: {node_part}"

    def __call__(self, event: NodeEvent) -> None:
        self.state[event.key] = event.status
        if event.status == "done" and event.reused:
            self.reused.add(event.key)
        if self._live is not None:
            self._live.update(self.table())
        elif event.status in ("done", "failed", "skipped"):
            what = "reused" if event.reused else event.status
            extra = f": {event.error}" if event.error and event.status == "failed" else ""
            log.info(
                "%s %s %s (%.1fs)%s -- %s", event.stage, event.key, what, event.wall_s, extra, self.summary()
            )

    def __enter__(self) -> ProgressView:
        if self.live_enabled:
            self._live = Live(self.table(), console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self.table())
            self._live.__exit__(None, None, None)
            self._live = None
