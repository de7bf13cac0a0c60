"""tlcli's own Lightning callbacks: throughput, RNG state in checkpoints, weight EMA, LP-FT's frozen first epochs,
graceful Ctrl-C, progress output, checkpoints that write an epoch's state once.

Module-level classes, so they pickle (ddp_spawn sends the trainer's callbacks to each process).
"""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
import sys
import time
import weakref
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import torch
from lightning.pytorch import callbacks as pl_callbacks
from lightning.pytorch.callbacks import TQDMProgressBar, WeightAveraging

from tl_cli import STARTED_AT
from tl_cli.rundir import LAST, Interrupted

log = logging.getLogger(__name__)


def save_checkpoint_unshared(trainer: L.Trainer, filepath: str | Path, weights_only: bool = False) -> None:
    """`trainer.save_checkpoint`, except that a file which is a second name of another checkpoint (a hard link,
    see ModelCheckpoint) is replaced by a new file written beside it and renamed over it. Writing to it directly
    could change the other name too: fsspec writes to a temporary file in TMPDIR and moves it, and across
    filesystems (a local /tmp, outputs on NFS) the move copies into the existing file."""
    shared = trainer.strategy.broadcast(
        trainer.is_global_zero and os.path.isfile(filepath) and os.stat(filepath).st_nlink > 1
    )
    if not shared:
        trainer.save_checkpoint(filepath, weights_only)
        return
    tmp = f"{filepath}.tmp"
    trainer.save_checkpoint(tmp, weights_only)
    if trainer.is_global_zero:
        os.replace(tmp, filepath)
    trainer.strategy.barrier()


class ModelCheckpoint(pl_callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint with `last.ckpt` as timm's train.py keeps its last checkpoint: written at the end
    of every epoch, and a hard link to the best checkpoint when the epoch has just saved it, not a second copy.

    Lightning 2.6 writes `last.ckpt` only in a step that saved a top-k checkpoint, so after the last improving
    epoch it went stale: a `kill -9` lost every epoch since, not just the current one (what resume promises), and
    each improving epoch serialized the same state twice (~135 MB each for resnet18, with optimizer state).
    Lightning's own `save_last="link"` makes a relative symlink to the last saved checkpoint: just as stale, and
    dangling once top-k deletes its target. A linked name is never written through (`save_checkpoint_unshared`).
    The class keeps Lightning's name, so its state key in checkpoints (and resuming older runs) stays the same.
    A linked last.ckpt holds best's callback state, whose `last_model_path` is the one before this save; that
    matters only with `enable_version_counter=true` (tlcli's config sets it false).
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_if_stale(trainer)  # also in epochs without validation (check_val_every_n_epoch > 1)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def _save_last_if_stale(self, trainer: L.Trainer) -> None:
        """last.ckpt for this step, where Lightning saved nothing in it (a non-improving epoch)."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        saved = self._last_checkpoint_saved
        same_step = saved is not None and self._last_global_step_saved == trainer.global_step
        linked = same_step and filepath == self.last_model_path != saved and self._hard_link(trainer, saved, filepath)
        if not linked:  # Lightning's _save_checkpoint, with the write that cannot go through a link
            save_checkpoint_unshared(trainer, filepath, self.save_weights_only)
            self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        for logger in trainer.loggers if trainer.is_global_zero else []:
            logger.after_save_checkpoint(weakref.proxy(self))

    @staticmethod
    def _hard_link(trainer: L.Trainer, saved: str, filepath: str) -> bool:
        """`filepath` becomes a second name of `saved`; False (on every rank) where the filesystem cannot link."""
        linked = False
        if trainer.is_global_zero and os.path.isfile(saved):
            tmp = f"{filepath}.link-tmp"
            try:
                if not (os.path.isfile(filepath) and os.path.samefile(saved, filepath)):  # else linked already
                    if os.path.lexists(tmp):
                        os.remove(tmp)
                    os.link(saved, tmp)
                    os.replace(tmp, filepath)
                linked = True
            except OSError:
                linked = False
        return trainer.strategy.broadcast(linked)


class Throughput(L.Callback):
    """Wall time of the training loop and images seen, for summary.json: each batch counts from the end of the one
    before (or the epoch's start, or a validation's end) to its own end, data loading included, as timm's
    train.py counts its rate; validation and what follows the epoch's last batch are left out. Also the first
    steps' times, for what the first step does once (torch.compile compiles then)."""

    FIRST_STEPS = 6  # steps timed one by one: the first and a median of the rest

    def __init__(self) -> None:
        self.seconds, self.images, self._mark = 0.0, 0, 0.0
        self.first_step_at: float | None = None  # seconds since process start
        self.step_seconds: list[float] = []  # the first FIRST_STEPS training steps, optimizer step included
        self._step_start = 0.0
        self._validated = False  # a validation ran since the last training batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time() - STARTED_AT
        self._step_start = time.perf_counter()
        if self._validated:  # after a mid-epoch validation and its checkpoint writes (callbacks run after ours)
            self._mark, self._validated = self._step_start, False

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._mark = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._validated = True  # a validation inside the epoch (val_check_interval < 1) is not training

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self.seconds += now - self._mark
        self._mark = now
        self.images += len(batch[1])
        if len(self.step_seconds) < self.FIRST_STEPS:
            self.step_seconds.append(now - self._step_start)

    def first_step_extra(self) -> float:
        """The first step's time beyond the median of the next few (all of it when it was the only one)."""
        if not self.step_seconds:
            return 0.0
        first, rest = self.step_seconds[0], self.step_seconds[1:]
        return max(0.0, first - float(np.median(rest))) if rest else first


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class RngState(L.Callback):
    """Saves the global RNG states in checkpoints and restores them on resume, so a resumed run draws
    the same shuffles, augmentations and dropout masks as an uninterrupted one (the sanity check,
    which would consume random numbers, is skipped on resume)."""

    def state_dict(self) -> dict:
        s = _rng_state()
        # plain containers and tensors only: checkpoints must load with weights_only=True
        return {"python": [s["python"][0], list(s["python"][1]), s["python"][2]],
                "numpy": [s["numpy"][0], torch.from_numpy(s["numpy"][1].astype(np.int64)), *s["numpy"][2:]],
                "torch": s["torch"]}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        _set_rng_state({"python": (state["python"][0], tuple(state["python"][1]), state["python"][2]),
                        "numpy": (state["numpy"][0], state["numpy"][1].numpy().astype(np.uint32),
                                  *state["numpy"][2:]),
                        "torch": state["torch"]})  # fmt: skip


def _ema_decay_at(num_averaged: torch.Tensor | int, decay: float, warmup: bool) -> float:
    """The decay of the EMA update after `num_averaged` updates, by timm's ModelEmaV3.get_decay (warmup:
    1 - (1 + step)^(-2/3), capped at `decay`, so a short run's average is not stuck near the random head)."""
    from timm.utils import ModelEmaV3

    rule = SimpleNamespace(decay=decay, update_after_step=0, use_warmup=warmup, warmup_gamma=1.0,
                           warmup_power=2 / 3, min_decay=0.0)  # fmt: skip  # ModelEmaV3's defaults
    # Lightning's first update copies the weights (num_averaged 0); timm's step 1 is that copy too
    return ModelEmaV3.get_decay(rule, int(num_averaged) + 1)


def _ema_update(
    ema: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor, decay: float, warmup: bool
) -> None:
    """One EMA step over a same-dtype list of tensors, as timm's ModelEmaV3 does it: floating-point tensors
    lerp towards the current values (exact for unchanged ones: frozen weights stay bit-identical), integer
    buffers (BatchNorm's num_batches_tracked) are copied."""
    if torch.is_floating_point(ema[0]):
        torch._foreach_lerp_(ema, current, 1.0 - _ema_decay_at(num_averaged, decay, warmup))
    else:
        torch._foreach_copy_(ema, current)


class WeightEma(WeightAveraging):
    """optim.ema_decay: Lightning's weight averaging with timm's EMA update, after every optimizer step, over
    parameters and buffers (BatchNorm statistics are averaged too, as timm's ModelEmaV3 does by default).
    optim.ema_warmup: timm's decay warmup (ModelEmaV3 use_warmup), which tlcli's few-hundred-step runs need:
    without it, 0.999 over 300 steps leaves 74 % of the average at the initial weights.

    Lightning swaps the average in for validation and copies it into the model when training ends; checkpoints
    hold the average as `state_dict` (so tlcli's test, best.ckpt and model.safetensors use it) and the raw
    weights as `current_model_state`, which resume restores: a resumed run continues both exactly.
    """

    def __init__(self, decay: float, warmup: bool = False) -> None:
        # functools.partial of a module-level function: it pickles (ddp_spawn), a closure would not
        super().__init__(multi_avg_fn=functools.partial(_ema_update, decay=decay, warmup=warmup))
        self.decay = decay
        self.warmup = warmup


class FreezeBackboneEpochs(L.Callback):
    """strategy.freeze_epochs (LP-FT: head first, then all): epochs 0 .. epochs-1 train the new layers alone, the
    backbone frozen exactly as strategy=freeze freezes it (TransferNet.freeze: requires_grad off, eval mode, so
    BatchNorm statistics stay fixed); from epoch `epochs` on, everything trains.

    Lightning's BackboneFinetuning does not fit: it adds the backbone as a new param group (outside tlcli's
    LambdaLR, at its own LR), and its frozen BatchNorm runs in train mode on batch statistics. Here the optimizer
    holds the backbone's groups from the start (configure_optimizers runs before the first epoch freezes it):
    a frozen parameter gets no gradient, and torch's and timm's optimizers skip a parameter without one (no
    update, no weight decay, no moment state). One LambdaLR schedules every group by epoch, so once unfrozen the
    backbone trains at the LR plain finetune has at that epoch (lr x backbone_lr_mult x cosine, layer decay
    included), and the optimizer's structure never changes: a resume in either phase loads it as saved.
    """

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def _set_phase(self, trainer, pl_module) -> None:
        """The phase is a function of the epoch alone; set at every epoch start and at every (re)start of fit:
        a resume in the middle of an epoch gets no on_train_epoch_start."""
        net = pl_module.net
        if trainer.current_epoch < self.epochs:
            net.freeze("backbone")
        elif "backbone" in net.frozen:
            net.unfreeze("backbone")

    def on_train_start(self, trainer, pl_module) -> None:
        self._set_phase(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._set_phase(trainer, pl_module)
        if trainer.current_epoch == self.epochs and trainer.is_global_zero:
            groups = trainer.optimizers[0].param_groups if trainer.optimizers else []
            lrs = [g["lr"] for g in groups if str(g.get("name", "")).startswith("backbone")]
            log.info(
                "epoch %d/%d: backbone unfrozen after strategy.freeze_epochs=%d (step %d); it trains from here at "
                "lr %.2e (this epoch's lr x strategy.backbone_lr_mult)",
                trainer.current_epoch + 1, trainer.max_epochs, self.epochs, trainer.global_step, max(lrs, default=0.0),
            )  # fmt: skip


class StopAfterEpochs(L.Callback):
    """Stop fitting after `epochs` epochs without shortening the run: trainer.max_epochs, and with it the LR
    schedule, stays that of the full budget, so a checkpoint saved after the stop resumes exactly where an
    uninterrupted run would be (strategy=auto's race, tl_cli/run/race.py)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # after the epoch's validation
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class GracefulInterrupt(L.Callback):
    """First Ctrl-C: finish the current step, write last.ckpt, stop. A second Ctrl-C aborts at once."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.requested = False
        self.previous = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            signal.signal(signal.SIGINT, self.previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        print("\ntlcli: Ctrl-C: finishing this step, then writing checkpoints/last.ckpt ...", flush=True)

    def on_fit_start(self, trainer, pl_module) -> None:
        try:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: leave Ctrl-C to Lightning
            self.previous = None

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.requested:
            save_checkpoint_unshared(trainer, self.run_dir / LAST)
            raise Interrupted(trainer.current_epoch, trainer.global_step, self.run_dir)


class ProgressOrLines(TQDMProgressBar):
    """Lightning's progress bar in a terminal; where stdout (the bar's stream) is not one (CI, `| tee`, a SLURM
    log), which would get carriage returns and cursor-up codes, one plain log line per epoch instead, as timm's
    train.py prints."""

    def __init__(self, refresh_rate: int = 10, plain: bool | None = None) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.plain = not sys.stdout.isatty() if plain is None else plain
        if self.plain:
            self.disable()
        self._epoch_start = self._train_end = 0.0
        self._images = 0
        self._lr: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._epoch_start, self._train_end, self._images = time.perf_counter(), 0.0, 0
        # the LR this epoch trains at (epoch schedulers step before on_train_epoch_end)
        groups = trainer.optimizers[0].param_groups if trainer.optimizers else []
        self._lr = max((g["lr"] for g in groups), default=None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._images += len(batch[1])

    def on_validation_start(self, trainer, pl_module) -> None:
        super().on_validation_start(trainer, pl_module)
        if not trainer.sanity_checking and not self._train_end:
            self._train_end = time.perf_counter()  # images/s counts training only, not validation

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.plain and trainer.is_global_zero:
            log.info(self.epoch_line(trainer, pl_module))

    def epoch_line(self, trainer, pl_module) -> str:
        """epoch, train loss and acc, val loss and acc, images/s, LR, time."""
        now = time.perf_counter()
        train_seconds = (self._train_end or now) - self._epoch_start
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        train = pl_module.epoch_train_metrics() if hasattr(pl_module, "epoch_train_metrics") else None
        if train is not None:
            parts.append(f"train loss {train[0]:.4f} acc {train[1]:.4f}")
        metrics = trainer.callback_metrics
        if "val/loss" in metrics and "val/acc" in metrics:
            parts.append(f"val loss {float(metrics['val/loss']):.4f} acc {float(metrics['val/acc']):.4f}")
        parts.append(f"{self._images / max(train_seconds, 1e-9):.0f} img/s")
        if self._lr is not None:
            parts.append(f"lr {self._lr:.2e}")
        parts.append(f"{now - self._epoch_start:.1f} s")
        return "  ".join(parts)
