"""A live progress table of a running stage graph: nodes per stage and sweep cells by state.

Python::

    with ProgressView(graph, groups) as view:
        LocalExecutor().run(graph, root, on_event=view)
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.live import Live
from rich.table import Table

from spillover.pipeline.executors import NodeEvent
from spillover.pipeline.graph import Graph

__all__ = ["ProgressView"]

log = logging.getLogger(__name__)


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
