"""Executors run a stage graph; this module has their shared types and scheduler, and the local executor.

* :class:`LocalExecutor` (the default, what CI uses) runs ready nodes one at a time in this process.
* :class:`spillover.pipeline.ray_executor.RayExecutor` runs them as Ray tasks on one machine or a cluster.

Both share one interface (:class:`Executor`) and one :class:`Scheduler`, so they differ only in where a
node runs. Semantics common to both:

* A node whose folder is already finished is reused (its stage function returns at once).
* A failed node is retried up to ``max_retries`` times (a Python exception, or a Ray worker that died).
  When it still fails, every node downstream of it is skipped and reported; independent nodes go on.
* Each node appends its log (its ``logging`` records, stdout, stderr and any traceback) to
  ``log_dir/<stage>/<key>.log``, one header per attempt.

Python::

    from spillover.pipeline.executors import LocalExecutor
    results = LocalExecutor().run(graph, root)                       # sequential
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

from spillover.pipeline.graph import Graph, StageNode, load_fn
from spillover.rundir import COMPLETE_MARKER, default_root, is_complete

__all__ = [
    "Executor",
    "LocalExecutor",
    "NodeEvent",
    "NodeOutcome",
    "NodeResult",
    "Scheduler",
    "execute_node",
    "node_log_path",
    "prepare_run",
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
    """A change of state of one node, passed to ``on_event`` callbacks (e.g. a progress view)."""

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


def node_log_path(log_dir: Path, node: StageNode) -> Path:
    """Where a node's log goes: ``log_dir/<stage>/<key>.log``."""
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


class Scheduler:
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
            "log_file": str(node_log_path(self.log_dir, node)),
            "attempt": attempt,
            "header": f"stage {node.stage} node {node.key} ({node.fn})",
        }

    def complete(self, key: str, outcome: NodeOutcome) -> None:
        node = self.graph[key]
        attempt = self.attempts[key]
        logfile = node_log_path(self.log_dir, node)
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
                    down,
                    dnode.stage,
                    "skipped",
                    None,
                    reason,
                    node_log_path(self.log_dir, dnode),
                    0,
                    0.0,
                    False,
                )
                self._emit(NodeEvent(down, dnode.stage, "skipped", 0, reason))

    def fail_now(self, node: StageNode, error: str) -> None:
        """Fail a node without running it (e.g. no machine can ever hold its resources)."""
        self.attempts[node.key] = self.max_retries + 1
        self.state[node.key] = "running"
        self.complete(node.key, NodeOutcome(None, error, 0.0, False, ""))

    def ordered_results(self) -> dict[str, NodeResult]:
        return {k: self.results[k] for k in sorted(self.results, key=self._order.__getitem__)}


def prepare_run(root: str | Path | None, log_dir: str | Path | None) -> tuple[Path, Path]:
    """The absolute run root (created; default ``$SPILLOVER_HOME/runs``) and log folder (``root/_logs``)."""
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
        root_path, logs = prepare_run(root, log_dir)
        sched = Scheduler(graph, logs, self.max_retries, on_event)
        while not sched.finished():
            ready = sched.ready()
            if not ready:  # pragma: no cover - the scheduler marks every blocked node skipped
                raise RuntimeError("no node is ready but the graph is not finished")
            node = ready[0]
            kwargs = sched.start(node)
            kwargs["root"] = str(root_path)
            sched.complete(node.key, execute_node(**kwargs))
        return sched.ordered_results()
