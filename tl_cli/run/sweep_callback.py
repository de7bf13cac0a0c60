"""Hydra callback of `tlcli train` (configs/hydra/default.yaml): runs in the launching process. It keeps the
sweep folder in this module's own state; tl_cli/cli.py reads it through `sweep_dir()` when the app returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

_sweep_dir: str | None = None  # the sweep folder of the `tlcli train -m` in progress in this process


def forget() -> None:
    """A new command in this process: no sweep yet."""
    global _sweep_dir
    _sweep_dir = None


def sweep_dir() -> str | None:
    """The sweep folder of this process's `tlcli train -m`, once its sweep has started; else None."""
    return _sweep_dir


class RememberSweepDir(Callback):
    """Note the sweep folder before any job starts, so `tlcli train -m` can name `tlcli report <folder>` at the
    end, also when its jobs run in other processes (hydra/launcher=joblib, submitit_local, submitit_slurm)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _sweep_dir
        _sweep_dir = str(Path(config.hydra.sweep.dir).absolute())
