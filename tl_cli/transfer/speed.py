"""Moved to tl_cli/hardware.py (hardware and worker settings are no part of the transfer; data/ and config/ use
them too). This name stays an alias of that module for the imports not yet moved (commands/evaluate.py,
commands/predict.py): the same module object, so patching either name patches both."""

import sys

from tl_cli import hardware

sys.modules[__name__] = hardware
