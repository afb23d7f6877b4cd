"""The Ray executor: every ready node of a stage graph runs as a Ray task with the node's resources.

``pip install 'spillover[ray]'``. GPUs go to fine-tuning and generation, CPUs to judging and geometry.
:class:`RayExecutor` starts a private Ray instance bound to 127.0.0.1, or attaches to a running cluster
(``address="auto"`` or ``"ray://host:10001"``); stage folders land in the shared run root either way.
Retries, logs and failure propagation are the local executor's (:class:`spillover.pipeline.executors.Scheduler`).

Python::

    from spillover.pipeline.ray_executor import RayExecutor
    results = RayExecutor(num_cpus=2, max_retries=2).run(graph, root)  # private loopback Ray instance
    results = RayExecutor(address="auto").run(graph, root)           # the cluster this node belongs to
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from spillover.pipeline.executors import (
    NodeEvent,
    NodeOutcome,
    NodeResult,
    Scheduler,
    execute_node,
    node_log_path,
    prepare_run,
)
from spillover.pipeline.graph import Graph, Resources

__all__ = ["RayExecutor", "start_local_ray"]

log = logging.getLogger(__name__)


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
        root_path, logs = prepare_run(root, log_dir)
        owns = self._connect()
        import ray

        inflight: dict[Any, str] = {}
        try:
            sched = Scheduler(graph, logs, self.max_retries, on_event)
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
                        logfile = node_log_path(logs, graph[key])
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
