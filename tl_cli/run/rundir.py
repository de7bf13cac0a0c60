"""Moved to tl_cli/rundir.py (a base module: transfer/ names run-dir files too, and must not import run/). This
name stays an alias of that module for the imports not yet moved (commands/export.py): the same module object."""

import sys

from tl_cli import rundir

sys.modules[__name__] = rundir
