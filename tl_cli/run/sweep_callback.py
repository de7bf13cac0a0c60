"""Hydra callback of `tlcli train` (configs/hydra/default.yaml): runs in the launching process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class RememberSweepDir(Callback):
    """Note the sweep folder before any job starts, so `tlcli train -m` can name `tlcli report <folder>` at the
    end, also when its jobs run in other processes (hydra/launcher=joblib, submitit_local, submitit_slurm)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from tl_cli import cli

        cli._sweep_dir = str(Path(config.hydra.sweep.dir).absolute())
