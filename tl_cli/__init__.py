"""tlcli: transfer learning from the command line (timm + Lightning + Hydra).

Importing this package is cheap: torch, timm and Lightning load only when a command runs.
"""

__version__ = "0.1.0"
