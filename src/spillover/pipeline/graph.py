"""A stage graph: each node is one cached stage call, each edge "this stage reads that stage's folder".

A node names an importable stage function (``"module:function"``, so a Ray worker on another machine
can import it), the JSON-able config it is called with, and its inputs: other nodes (their finished
folders), paths or plain values. A stage function has one signature::

    def my_stage(config: dict, inputs: dict, root: Path) -> Path:
        return run_stage("my_stage", config, lambda out: ..., root=root, inputs=inputs)

It returns a finished :func:`spillover.rundir.run_stage` folder, so every node is cached on disk
by content: a second run of the same graph, or of a graph that shares nodes with it, reuses every
finished folder and recomputes only what is missing or was interrupted.

Identical nodes are merged when they are added (same stage, function, config and inputs give the same
key). That is how "score each dataset once and reuse the scores across seeds and filter fractions"
falls out of building one small graph per sweep cell. A node can only name nodes added before it, so a
graph is acyclic by construction and its insertion order is a valid execution order.

Python::

    from spillover.pipeline.graph import Graph, Resources
    from spillover.pipeline.executors import LocalExecutor

    graph = Graph()
    scores = graph.add("score", "mypkg.stages:score", {"dataset": "insecure"})
    ft = graph.add("finetune", "mypkg.stages:finetune", {"seed": 0}, inputs={"scores": scores},
                   resources=Resources(num_gpus=1))
    results = LocalExecutor().run(graph, root)
    results[ft.key].path      # the finished fine-tune folder
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from spillover.config import config_hash, to_dict

__all__ = [
    "Graph",
    "GraphError",
    "NodeRef",
    "Resources",
    "StageFn",
    "StageNode",
    "fn_ref",
    "load_fn",
]


class GraphError(ValueError):
    """A node or stage function that cannot be part of a graph."""


class StageFn(Protocol):
    """A cached stage call: computes (or reuses) its run folder under ``root`` and returns it."""

    def __call__(self, config: dict[str, Any], inputs: dict[str, Any], root: Path) -> Path: ...


@dataclass(frozen=True)
class Resources:
    """What one execution of a node needs; the Ray executor reserves it, the local one ignores it."""

    num_cpus: float = 1.0
    """CPU cores; also the number of torch threads the Ray executor gives the stage."""
    num_gpus: float = 0.0
    """GPUs (fractions share a GPU between tasks)."""
    memory_gb: float | None = None
    """Host memory to reserve, in GiB (None: no reservation)."""
    custom: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources, e.g. ``{"accelerator_type:H100": 0.001}`` to pin a GPU type."""

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"num_cpus and num_gpus must be >= 0, got {self.num_cpus}, {self.num_gpus}")
        if self.memory_gb is not None and self.memory_gb <= 0:
            raise ValueError(f"memory_gb must be > 0 or None, got {self.memory_gb}")
        if any(v < 0 for v in self.custom.values()):
            raise ValueError(f"custom resources must be >= 0, got {self.custom}")


@dataclass(frozen=True)
class NodeRef:
    """A handle on a node of a graph, used as another node's input."""

    key: str
    stage: str


@dataclass(frozen=True)
class StageNode:
    """One stage call in a graph."""

    key: str
    """Hash of stage, function, config and inputs; identical calls share a key (and are run once)."""
    stage: str
    """Stage name: groups nodes in progress views and logs, and selects per-stage resources."""
    fn: str
    """``"module:function"`` of the :class:`StageFn`."""
    config: dict[str, Any]
    """JSON-ready config passed to the function."""
    inputs: dict[str, Any]
    """Name -> :class:`NodeRef` (replaced by that node's folder when run), ``Path`` or JSON value."""
    resources: Resources = field(default_factory=Resources)

    @property
    def deps(self) -> tuple[str, ...]:
        """Keys of the nodes this node reads, in input order, without repeats."""
        return tuple(dict.fromkeys(v.key for v in self.inputs.values() if isinstance(v, NodeRef)))


def fn_ref(fn: str | Callable[..., Any]) -> str:
    """The ``"module:function"`` reference of a stage function (a string is checked and returned).

    Raises:
        GraphError: for lambdas and nested functions, which another process cannot import by name.
    """
    if isinstance(fn, str):
        mod, sep, name = fn.partition(":")
        if not sep or not mod or not name:
            raise GraphError(f"stage function {fn!r} must look like 'package.module:function'")
        return fn
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module or not qualname or "<" in qualname:
        raise GraphError(
            f"stage function {fn!r} is not importable by name; define it at module level "
            "so Ray workers can import it"
        )
    return f"{module}:{qualname}"


def load_fn(ref: str) -> StageFn:
    """Import the stage function named by ``"module:function"`` (nested attributes allowed)."""
    module_name, _, attr = fn_ref(ref).partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise GraphError(
            f"cannot import module {module_name!r} of stage function {ref!r}: {exc}; on a cluster, "
            "install spillover (and the module's package) on every worker"
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise GraphError(f"module {module_name!r} has no attribute {attr!r} (stage function {ref!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise GraphError(f"stage function {ref!r} is not callable")
    fn: StageFn = obj
    return fn


def _input_identity(value: Any) -> Any:
    if isinstance(value, NodeRef):
        return {"node": value.key}
    if isinstance(value, Path):
        return {"path": str(value)}
    return to_dict(value)


class Graph:
    """Nodes in insertion (= execution) order, merged by key."""

    def __init__(self) -> None:
        self._nodes: dict[str, StageNode] = {}

    def add(
        self,
        stage: str,
        fn: str | Callable[..., Any],
        config: Any,
        *,
        inputs: Mapping[str, Any] | None = None,
        resources: Resources | None = None,
    ) -> NodeRef:
        """Add a stage call, or return the identical node already in the graph.

        Args:
            stage: stage name (a folder-safe word such as ``"finetune"``).
            fn: the :class:`StageFn`, or its ``"module:function"``.
            config: a dataclass or JSON-able mapping; passed to ``fn`` as a plain dict.
            inputs: name -> :class:`NodeRef` of this graph, ``Path`` or JSON-able value.
            resources: what one run needs (default: one CPU).

        Returns:
            The node's handle, to use as another node's input.
        """
        if not stage or not stage.replace("_", "").replace("-", "").isalnum():
            raise GraphError(f"stage name {stage!r} must be a non-empty word (letters, digits, _ or -)")
        ref = fn_ref(fn)
        cfg = to_dict(config)
        if not isinstance(cfg, dict):
            raise GraphError(f"config of stage {stage!r} must be a mapping or dataclass, got {type(config)}")
        ins = dict(inputs or {})
        for name, value in ins.items():
            if isinstance(value, NodeRef) and value.key not in self._nodes:
                raise GraphError(
                    f"input {name!r} of stage {stage!r} refers to node {value.stage}:{value.key}, "
                    "which is not in this graph; add it first"
                )
        key = config_hash(
            {
                "stage": stage,
                "fn": ref,
                "config": cfg,
                "inputs": {k: _input_identity(v) for k, v in ins.items()},
            }
        )
        if key not in self._nodes:
            self._nodes[key] = StageNode(key, stage, ref, cfg, ins, resources or Resources())
        return NodeRef(key, stage)

    def set_resources(self, stage: str, resources: Resources) -> int:
        """Give every node of ``stage`` these resources; returns how many nodes changed."""
        n = 0
        for key, node in self._nodes.items():
            if node.stage == stage:
                self._nodes[key] = dataclasses.replace(node, resources=resources)
                n += 1
        return n

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[StageNode]:
        return iter(list(self._nodes.values()))

    def __contains__(self, key: object) -> bool:
        return key in self._nodes

    def __getitem__(self, key: str) -> StageNode:
        return self._nodes[key]

    @property
    def stages(self) -> list[str]:
        """Stage names in first-appearance order."""
        return list(dict.fromkeys(n.stage for n in self._nodes.values()))

    def upstream(self, key: str) -> list[str]:
        """``key`` and every node it (transitively) reads, in execution order."""
        wanted = {key}
        for node in reversed(list(self._nodes.values())):
            if node.key in wanted:
                wanted.update(node.deps)
        return [k for k in self._nodes if k in wanted]

    def downstream(self, key: str) -> list[str]:
        """Every node that (transitively) reads ``key``, in execution order (``key`` excluded)."""
        tainted = {key}
        out = []
        for node in self._nodes.values():
            if any(d in tainted for d in node.deps):
                tainted.add(node.key)
                out.append(node.key)
        return out

    def resolve_inputs(self, key: str, outputs: Mapping[str, Path]) -> dict[str, Any]:
        """The node's inputs with every :class:`NodeRef` replaced by that node's finished folder."""
        resolved: dict[str, Any] = {}
        for name, value in self._nodes[key].inputs.items():
            if isinstance(value, NodeRef):
                if value.key not in outputs:
                    raise GraphError(f"node {key} needs {value.stage}:{value.key}, which has not finished")
                resolved[name] = outputs[value.key]
            else:
                resolved[name] = value
        return resolved
