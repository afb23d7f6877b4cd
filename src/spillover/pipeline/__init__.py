"""Stages, content-addressed run directories and executors."""

from spillover.rundir import default_root, is_complete, read_config, run_id, run_stage

__all__ = ["default_root", "is_complete", "read_config", "run_id", "run_stage"]
