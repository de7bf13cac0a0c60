"""What every command that trains (`tlcli train`, `tlcli lr-find`) sets up first: its Hydra run dir and quiet
framework logs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path


def run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _no_advertisements(record: logging.LogRecord) -> bool:
    """Lightning's tips for its cloud products (litlogger, litmodels) are not run information."""
    return "Tip: For seamless cloud" not in str(record.msg)


def quiet_framework_noise() -> None:
    """Lightning logs through its own console handler; let Hydra's root handlers (console + <task>.log)
    carry it instead of printing every line twice. Silence warnings that tlcli triggers on purpose."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_no_advertisements)
    for message in (
        ".*module\\(s\\) in eval mode.*",  # frozen parts are kept in eval mode deliberately
        ".*exists and is not empty.*",  # the run dir already holds Hydra's .hydra/ and train.log
        ".*LeafSpec.*",
        ".*does not have many workers.*",  # in-memory datasets are fastest without workers on 2 cores
        ".*smaller than the logging interval.*",
    ):
        warnings.filterwarnings("ignore", message=message)
