"""The run directory of `tlcli train`: its file names, a typed summary.json and the one weights resolver.

The layout is the contract in ../shared/DESIGN.md (section 3); every module names run-dir files through here.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_cli.errors import TlcliError

SUMMARY = "summary.json"
LABELS = "labels.json"
MODEL = "model.safetensors"  # trained network: backbone./extension./head. keys
PREPROCESS = "preprocess.json"  # beside an exported model: timm's data config
METRICS = "metrics.csv"
LR_PREFIX = "lr-"  # LearningRateMonitor's columns in metrics.csv: lr-<optimizer>/<param group>
CURVES = "curves.png"  # loss / accuracy / LR per epoch, drawn from metrics.csv after fit
CALIBRATION = "calibration.json"  # the temperature fitted on the val split's logits, with val ECE before/after
CONFIG = Path(".hydra") / "config.yaml"  # Hydra's record of the composed config
OVERRIDES = Path(".hydra") / "overrides.yaml"
CHECKPOINTS = Path("checkpoints")
BEST = CHECKPOINTS / "best.ckpt"
LAST = CHECKPOINTS / "last.ckpt"
CONFIG_SHA = CHECKPOINTS / "config.sha"  # identity of the config an unfinished run was started with


@dataclass
class Summary:
    """summary.json: what a finished run did and measured (written by tlcli train; readers take the dict)."""

    strategy: str  # "auto" for strategy=auto; what it chose: strategy_auto["chosen"]
    backbone: str
    weights: str  # where the source weights came from ("random init" for scratch)
    num_classes: int
    params: dict[str, int]
    metrics: dict[str, float]
    epochs: int
    train_seconds: float
    train_images_per_second: float
    dataset: str | None = None
    samples_per_class: int | None = None
    lr: float | None = None
    split_sizes: dict[str, int] = field(default_factory=dict)
    split_notes: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    config_sha: str | None = None
    data_config: dict[str, Any] = field(default_factory=dict)
    best_checkpoint: str | None = None
    device: str | None = None
    precision: str | None = None
    channels_last: bool | None = None
    feature_cache: bool | None = None
    seconds_to_first_step: float | None = None
    # model.compile=true: the backend check plus the first training step's extra time (torch.compile is lazy)
    compile_seconds: float | None = None
    unreadable_files: int = 0  # image files that failed to decode; each was replaced by the next readable one
    strategy_auto: dict[str, Any] | None = None  # strategy=auto: what was measured and chosen

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["strategy_auto"] is None:
            del data["strategy_auto"]
        return data


@dataclass(frozen=True)
class RunDir:
    """A `tlcli train` run directory (it may be unfinished: no summary.json yet)."""

    path: Path

    def __truediv__(self, name: str | Path) -> Path:
        return self.path / name

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    def relative(self, file: str | Path) -> str:
        """`file` relative to the run dir when it lies inside it (symlinks resolved, so a run reached through a
        symlinked output dir still matches), else its absolute path."""
        real, root = Path(file).resolve(), self.path.resolve()
        return str(real.relative_to(root)) if real.is_relative_to(root) else str(real)

    def is_run(self) -> bool:
        """Whether the folder looks like a run (its Hydra config or its summary is there)."""
        return self.config_file.is_file() or self.summary_file.is_file()

    def read_summary(self) -> dict[str, Any] | None:
        """summary.json as a dict; None when it is missing or half-written (the run did not finish)."""
        try:
            data = json.loads(self.summary_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def val_curve(self) -> dict[int, float]:
        """epoch -> val/acc from metrics.csv (`read_epochs`; empty when there is none)."""
        metrics = self.path / METRICS
        return read_epochs(metrics).metrics.get("val/acc", {}) if metrics.is_file() else {}

    def write_summary(self, summary: Summary) -> Path:
        self.summary_file.write_text(json.dumps(summary.to_dict(), indent=2))
        return self.summary_file

    def write_labels(self, classes: list[str]) -> Path:
        path = self.path / LABELS
        path.write_text(json.dumps(classes, indent=1))
        return path

    def weights_file(self) -> Path | None:
        """The trained weights, in the one order every command uses: model.safetensors (the tested best-val
        weights), else checkpoints/best.ckpt, else checkpoints/last.ckpt (an interrupted run)."""
        for candidate in (MODEL, BEST, LAST):
            if (self.path / candidate).is_file():
                return self.path / candidate
        return None

    @classmethod
    def holding(cls, weights: Path) -> RunDir | None:
        """The run directory a weights file belongs to (model.safetensors in it, checkpoints one level down)."""
        parent = weights.parent if weights.suffix == ".safetensors" else weights.parent.parent
        run = cls(parent)
        return run if run.is_run() else None


@dataclass
class EpochLog:
    """Per-epoch values of metrics.csv: metrics[name][epoch] and lrs[param group][epoch]."""

    metrics: dict[str, dict[int, float]] = field(default_factory=dict)
    lrs: dict[str, dict[int, float]] = field(default_factory=dict)

    @property
    def epochs(self) -> list[int]:
        return sorted({e for values in (*self.metrics.values(), *self.lrs.values()) for e in values})


def read_epochs(path: Path) -> EpochLog:
    """metrics.csv per epoch, a row logged twice for an epoch read once (its later value wins).
    LearningRateMonitor's rows carry no epoch: each LR belongs to the next epoch logged after it (it is logged when
    that epoch starts)."""
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


EXIT_INTERRUPTED = 130  # the shell's code for "stopped by SIGINT"


class Interrupted(TlcliError):
    """Training stopped by Ctrl-C after a checkpoint was written."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, epoch: int, step: int, run_dir: Path) -> None:
        super().__init__(
            f"interrupted at epoch {epoch}, step {step}; checkpoint written to {run_dir / LAST}; "
            f"resume with: tlcli train resume={run_dir}"
        )
