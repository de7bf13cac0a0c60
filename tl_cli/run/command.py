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


def fresh_run_dir(cfg) -> Path | None:
    """The run dir Hydra has just made for this single run, where it holds only Hydra's own record (.hydra/ and an
    empty <task>.log): what a failed config check may remove (discard_run_dir). None for a resumed run, a sweep's
    job, a rank other than global rank 0, or a folder that already held anything else."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from tl_cli.ranks import global_rank

    hydra = HydraConfig.get()
    if hydra.mode != RunMode.RUN or cfg.get("resume") or global_rank() != 0:
        return None
    path = Path(hydra.runtime.output_dir)
    log = path / f"{hydra.job.name}.log"
    if not path.is_dir() or log.is_file() and log.stat().st_size:
        return None
    if any(entry.name not in _hydra_files() for entry in path.iterdir()):
        return None
    return path


def discard_run_dir(path: Path) -> bool:
    """Remove a fresh_run_dir after a failed check, if it still holds only Hydra's record (and empty folders):
    nothing the run wrote is ever removed. Returns whether it was removed."""
    import shutil

    for entry in path.iterdir():
        if entry.name not in _hydra_files() and not (entry.is_dir() and not any(entry.iterdir())):
            return False
    for handler in logging.getLogger().handlers:  # Hydra's <task>.log handler: close it before its file goes
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == path:
            logging.getLogger().removeHandler(handler)
            handler.close()
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


def _hydra_files() -> set[str]:
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    return {hydra.output_subdir or ".hydra", f"{hydra.job.name}.log"}
