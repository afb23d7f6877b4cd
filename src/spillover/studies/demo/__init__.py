"""``spillover demo``: the whole story on the built-in model organism, end to end, cached stage by stage.

    spillover demo --out runs/demo              # every stage (timing: docs/results.md#demo-timing)
    spillover demo --quick --out runs/quick     # a tiny organism: a first look
    spillover demo --seeds 0,1,2                # more fine-tuning seeds (tighter intervals)

Python::

    from spillover.studies.demo import DemoConfig, run_demo
    summary = run_demo(DemoConfig.quick(), out=Path("runs/quick"))

Stages (each a content-addressed run directory under ``--root``, default ``$SPILLOVER_HOME/runs``):
train (or reuse) the organism and its SAEs; the geometry of every dataset vs the toxic features;
fine-tunes of the inducing and control datasets and their EM; the spillover measurement (feature
activation changes vs decoder cosines); filtering with its baselines; training dynamics. A second run
reuses every finished stage, and an interrupted one redoes only the unfinished stage. The output
folder gets ``summary.json`` (the numbers), ``report.html`` (self-contained) and the per-stage
paths; the terminal gets a short table.

Modules: ``config`` (:class:`DemoConfig`), ``stages`` (the demo's own stages and EM runs), ``run``
(:func:`run_demo`), ``summary`` (the summary's sections and :func:`print_summary`).
"""

from spillover.studies.demo.config import DemoConfig, SpilloverConfig
from spillover.studies.demo.run import run_demo
from spillover.studies.demo.summary import print_summary

__all__ = ["DemoConfig", "SpilloverConfig", "print_summary", "run_demo"]
