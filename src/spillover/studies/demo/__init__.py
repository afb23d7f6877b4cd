"""``spillover demo``: the whole story on the built-in model organism, end to end, cached stage by stage.

    spillover demo --out runs/demo              # 3 shipped organisms (timing: docs/results.md#demo-timing)
    spillover demo --quick --out runs/quick     # a tiny organism: a first look
    spillover demo --seeds 0,1,2                # more fine-tuning seeds (tighter intervals)
    spillover demo --organisms 0,1,2,3,4        # all five shipped organisms

Python::

    from spillover.studies.demo import DemoConfig, run_demo
    summary = run_demo(DemoConfig.quick(), out=Path("runs/quick"))

Stages (each a content-addressed run directory under ``--root``, default ``$SPILLOVER_HOME/runs``), per
organism: install (shipped) or train the organism and its SAEs; the geometry of every dataset vs the
toxic features; fine-tunes of the inducing and control datasets and their EM; filtering with its
baselines; training dynamics; and once, the spillover measurement (feature activation changes vs
decoder cosines). Every claim pools over organisms x fine-tuning seeds and gets a verdict. A second run
reuses every finished stage, and an interrupted one redoes only the unfinished stage. The output
folder gets ``summary.json`` (the numbers), ``report.html`` (self-contained) and the per-stage paths;
the terminal gets the tables and the claims.

Modules: ``config`` (:class:`DemoConfig`), ``stages`` (the demo's own stages and EM runs), ``parallel``
(worker processes), ``pooled`` (statistics over units), ``verdicts`` (the claims), ``run``
(:func:`run_demo`), ``summary`` (the summary's sections and :func:`print_summary`).
"""

from spillover.studies.demo.config import DemoConfig, SpilloverConfig
from spillover.studies.demo.run import run_demo
from spillover.studies.demo.summary import print_summary

__all__ = ["DemoConfig", "SpilloverConfig", "print_summary", "run_demo"]
