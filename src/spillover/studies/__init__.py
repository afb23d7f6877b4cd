"""Studies on the model organism that combine the libraries: the demo, training dynamics, filtering.

Each study is a function over cached stages (``spillover.rundir``) that writes a summary a report reads.
"""
