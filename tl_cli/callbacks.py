"""tlcli's own Lightning callbacks: throughput, RNG state in checkpoints, graceful Ctrl-C.

Module-level classes, so they pickle (ddp_spawn sends the trainer's callbacks to each process).
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from tl_cli import STARTED_AT
from tl_cli.resume import Interrupted
from tl_cli.rundir import LAST


class Throughput(L.Callback):
    """Wall time of the training epochs (validation excluded) and images seen, for summary.json."""

    def __init__(self) -> None:
        self.seconds, self.images, self._start = 0.0, 0, 0.0
        self.first_step_at: float | None = None  # seconds since process start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time() - STARTED_AT

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[1])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds += time.perf_counter() - self._start


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
            trainer.save_checkpoint(self.run_dir / LAST)
            raise Interrupted(trainer.current_epoch, trainer.global_step, self.run_dir)
