"""metrics.csv: Lightning's CSV logger, kept across a resume, and its rows read back per epoch.

Lightning's CSVLogger deletes an existing metrics.csv when it starts, so a resumed run would keep only the epochs
after the resume. The logger here appends instead; a row logged twice for an epoch (a run killed after a flush,
resumed from the epoch before) is read back once, its later value winning.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

LR_PREFIX = "lr-"  # LearningRateMonitor's columns: lr-<optimizer>/<param group>


class _KeepingWriter(ExperimentWriter):
    """Lightning's writer without the deletion of an earlier metrics.csv: new rows are appended to it."""

    def _check_log_dir_exists(self) -> None:
        if Path(self.metrics_file_path).is_file():  # the earlier header's keys: a new key rewrites with all of them
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])


class CSVLogger(LightningCSVLogger):
    """lightning.pytorch.loggers.CSVLogger that appends to the run's metrics.csv (configs/logger/csv.yaml)."""

    @property
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


@dataclass
class EpochLog:
    """Per-epoch values of metrics.csv: metrics[name][epoch] and lrs[param group][epoch]."""

    metrics: dict[str, dict[int, float]] = field(default_factory=dict)
    lrs: dict[str, dict[int, float]] = field(default_factory=dict)

    @property
    def epochs(self) -> list[int]:
        return sorted({e for values in (*self.metrics.values(), *self.lrs.values()) for e in values})


def read_epochs(path: Path) -> EpochLog:
    """metrics.csv per epoch. LearningRateMonitor's rows carry no epoch: each LR belongs to the next epoch
    logged after it (it is logged when that epoch starts)."""
    log, pending = EpochLog(), {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if k and v not in (None, "") and _finite(v)}
            lrs = {k.removeprefix(LR_PREFIX): v for k, v in values.items() if k.startswith(LR_PREFIX)}
            if "epoch" not in values:
                pending.update(lrs)
                continue
            epoch = int(values.pop("epoch"))
            for group, lr in {**pending, **lrs}.items():
                log.lrs.setdefault(group, {})[epoch] = lr
            pending = {}
            for name, value in values.items():
                if name != "step" and not name.startswith(LR_PREFIX):
                    log.metrics.setdefault(name, {})[epoch] = value
    return log


def _finite(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
