"""tlcli: transfer learning from the command line (timm + Lightning + Hydra).

Importing this package is cheap: torch, timm and Lightning load only when a command runs.
"""

import time as _time

__version__ = "0.1.0"
STARTED_AT = _time.time()  # process start, as seen by tlcli: summary.json reports the time to the first step
