"""`tlcli lr-find <train overrides>`: Lightning's LR range test (Tuner.lr_find) on the job `tlcli train` builds from
the same overrides; prints `suggested optim.lr=<value>` and writes lr_find.png and lr_find.json into its run dir."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from tl_cli.config.strategies import is_auto
from tl_cli.errors import TlcliError
from tl_cli.ranks import several_processes
from tl_cli.run.command import quiet_framework_noise, run_dir
from tl_cli.run.training import TransferJob, attach_feature_cache, build_job, make_trainer, to_channels_last

log = logging.getLogger(__name__)

MIN_STEPS = 20  # Lightning's suggestion skips the sweep's first 10 losses and its last one


def check_settings(cfg: DictConfig) -> None:
    """One-line errors for what the sweep cannot run with."""
    s = cfg.lr_find
    if is_auto(cfg):
        raise TlcliError(
            "lr-find needs a concrete strategy, not strategy=auto (it picks one by measuring); run "
            "`tlcli train strategy=auto`, then lr-find with the strategy it chose, e.g. strategy=freeze"
        )
    if several_processes(cfg.trainer):
        raise TlcliError(
            "lr-find runs in one process on one device (a short sweep, not worth starting ranks for); drop "
            "trainer.devices/trainer.num_nodes (or torchrun/srun), then scale the LR it suggests from one device's "
            "batch to your global batch (docs/scaling.md)"
        )
    if not 0 < s.min_lr < s.max_lr:
        raise TlcliError(f"lr_find.min_lr={s.min_lr} and lr_find.max_lr={s.max_lr} need 0 < min_lr < max_lr")
    if s.num_training < MIN_STEPS:
        raise TlcliError(
            f"lr_find.num_training={s.num_training} is too few steps; use at least {MIN_STEPS} "
            "(Lightning's suggestion skips the first 10)"
        )


def _warn_if_groups_differ(cfg: DictConfig, job: TransferJob) -> None:
    if job.strategy.train_backbone and (cfg.strategy.backbone_lr_mult != 1 or cfg.optim.get("layer_decay")):
        log.warning(
            "Lightning's LR finder sweeps one LR for every parameter group: the backbone follows the head's LR "
            "during the sweep (strategy.backbone_lr_mult=%s, optim.layer_decay=%s apply in training)",
            cfg.strategy.backbone_lr_mult,
            cfg.optim.get("layer_decay"),
        )


def find_lr(cfg: DictConfig) -> tuple[Any, TransferJob]:
    """Run Tuner.lr_find on train's job (same data, network, module, precision); returns Lightning's finder."""
    from lightning.pytorch.tuner import Tuner

    job = build_job(cfg)
    _warn_if_groups_differ(cfg, job)
    # max_epochs unbounded: the sweep's num_training steps decide its length, however short an epoch is
    trainer_args = {**dict(cfg.trainer), "max_epochs": -1, "enable_checkpointing": False}
    trainer, channels_last = make_trainer(trainer_args, cfg.model.channels_last, callbacks=[], loggers=[])
    if channels_last:
        to_channels_last(job)
    attach_feature_cache(cfg, job, trainer, channels_last, splits=("train", "val"))  # the finder never tests
    s = cfg.lr_find
    finder = Tuner(trainer).lr_find(
        job.module, datamodule=job.datamodule, min_lr=s.min_lr, max_lr=s.max_lr, num_training=s.num_training
    )
    return finder, job


def write_results(finder: Any, suggestion: float, out: Path) -> None:
    """lr_find.json (the sweep's LRs and losses, the suggestion), lr_find.png (Lightning's plot, suggestion marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {"suggestion": suggestion, "lrs": finder.results["lr"], "losses": finder.results["loss"]}
    (out / "lr_find.json").write_text(json.dumps(results, indent=1) + "\n")
    figure = finder.plot(suggest=True)
    figure.savefig(out / "lr_find.png", dpi=120, bbox_inches="tight")
    plt.close(figure)


def main(cfg: DictConfig) -> float:
    """Sweep, write the results, print the suggestion as an override; returns it."""
    check_settings(cfg)
    quiet_framework_noise()
    torch.set_float32_matmul_precision("high")
    out = run_dir()
    finder, _ = find_lr(cfg)
    suggestion = finder.suggestion() if finder is not None else None
    if suggestion is None:  # the loss diverged (or was not finite) in almost every step
        steps = len(finder.results["lr"]) if finder is not None else 0
        raise TlcliError(
            f"lr-find got too few finite losses for a suggestion ({steps} steps); lower lr_find.max_lr "
            f"(now {cfg.lr_find.max_lr}) or raise lr_find.num_training (now {cfg.lr_find.num_training})"
        )
    write_results(finder, float(suggestion), out)
    print(f"suggested optim.lr={suggestion:.3g}", flush=True)
    print(f"run_dir: {out}", flush=True)
    return float(suggestion)
