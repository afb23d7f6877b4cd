"""``python -m spillover``: the same command as ``spillover``."""

from spillover.cli import app

app(prog_name="spillover")
