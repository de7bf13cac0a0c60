"""metrics.csv: Lightning's CSV logger, kept across a resume (its rows are read back per epoch by
tl_cli/rundir.py's `read_epochs`).

Lightning's CSVLogger deletes an existing metrics.csv when it starts, so a resumed run would keep only the epochs
after the resume. The logger here appends instead; a row logged twice for an epoch (a run killed after a flush,
resumed from the epoch before) is read back once, its later value winning.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


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
