"""Interruption and resume: Ctrl-C finishes the step and writes last.ckpt; `resume=<run dir>` continues.

Checkpoint files are written atomically by Lightning itself (fsspec transaction: temp file, then rename),
so a `kill -9` never leaves a half-written .ckpt; it loses at most the work since the last epoch.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

from tl_cli.errors import TlcliError

LAST = Path("checkpoints") / "last.ckpt"
EXIT_INTERRUPTED = 130  # the shell's code for "stopped by SIGINT"


def resume_args(args: list[str]) -> list[str]:
    """Rewrite `resume=<run dir> [overrides]` into Hydra args that reload that run's own config and
    write into the same run directory (without rewriting its .hydra/ record)."""
    value = next(a.split("=", 1)[1] for a in args if a.startswith("resume="))
    run = Path(value).expanduser().resolve()
    if not (run / ".hydra" / "config.yaml").is_file():
        raise TlcliError(f"resume={value} is not a tlcli run directory (no .hydra/config.yaml)")
    if not (run / LAST).is_file():
        raise TlcliError(f"resume={value} has no {LAST} to resume from; start a new run instead")
    rest = [a for a in args if not a.startswith("resume=")]
    return [
        "--config-path", str(run / ".hydra"), "--config-name", "config",
        f"hydra.run.dir={run}", "hydra.output_subdir=null", "hydra.job.name=train", f"++resume={run}", *rest,
    ]  # fmt: skip


def _rng_state() -> dict:
    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def make_callbacks(run_dir: Path) -> list:
    """RNG-state and Ctrl-C callbacks (Lightning classes, built lazily so this module imports no torch)."""
    import lightning as L
    import numpy as np
    import torch

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

        def __init__(self) -> None:
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
                trainer.save_checkpoint(run_dir / LAST)
                raise Interrupted(trainer.current_epoch, trainer.global_step, run_dir)

    return [RngState(), GracefulInterrupt()]


class Interrupted(TlcliError):
    """Training stopped by Ctrl-C after a checkpoint was written."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, epoch: int, step: int, run_dir: Path) -> None:
        super().__init__(
            f"interrupted at epoch {epoch}, step {step}; checkpoint written to {run_dir / LAST}; "
            f"resume with: tlcli train resume={run_dir}"
        )
