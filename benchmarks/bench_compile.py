"""model.compile on this machine: tlcli's training step eager vs torch.compile'd, and what compiling costs.

The same TransferNet (finetune: everything trains), optimizer groups, batch and in-memory data through a real
Lightning Trainer with tlcli's module, once eager and once with the module's compiled training forward
(model.compile=true). Speed is batch / median step time after the first steps; the compile time is the one
`tlcli train` reports as summary.json's compile_seconds (the backend check plus the first step's extra time).

    python -m benchmarks.bench_compile [--quick] [--backbone resnet18] [--img 64] [--batch 32]
"""

from __future__ import annotations

import argparse
import time

import lightning as L

from benchmarks.bench_throughput import OPTIM, loader, make_net
from benchmarks.common import machine, median, table
from tl_cli import hardware
from tl_cli.run.training import make_trainer
from tl_cli.transfer.callbacks import Throughput
from tl_cli.transfer.module import TransferModule


class StepTimes(L.Callback):
    """Wall time of every training step, optimizer step included."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def run(backbone: str, img: int, batch: int, steps: int, warmup: int, compiled: bool) -> tuple[float, float]:
    """(images/s after warmup, compile seconds) of one Trainer fit."""
    precision, channels_last, _ = hardware.resolve("auto", "auto", "cpu")
    module = TransferModule(make_net(backbone, img, channels_last), 10, OPTIM, backbone=backbone)
    module.channels_last = channels_last
    check = 0.0
    if compiled:
        start = time.perf_counter()
        hardware.check_compile("cpu")
        check = time.perf_counter() - start
        module.compile_net = True
    times, throughput = StepTimes(), Throughput()
    trainer, _ = make_trainer(
        dict(
            accelerator="cpu",
            devices=1,
            max_steps=warmup + steps,
            precision=precision,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        ),
        channels_last,
        [times, throughput],
        [],
    )
    trainer.fit(module, train_dataloaders=loader(img, batch, warmup + steps))
    return batch / median(times.seconds[warmup:]), check + throughput.first_step_extra() if compiled else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--img", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    steps, warmup = (8, 2) if args.quick else (20, 3)
    eager, _ = run(args.backbone, args.img, args.batch, steps, warmup, compiled=False)
    print(f"eager: {eager:.1f} img/s", flush=True)
    compiled, compile_seconds = run(args.backbone, args.img, args.batch, steps, warmup, compiled=True)
    print(f"compiled: {compiled:.1f} img/s, compile {compile_seconds:.1f} s", flush=True)
    # the first step's extra time, repaid after this many images at the compiled speed
    saved_per_image = 1 / eager - 1 / compiled
    break_even = f"{compile_seconds / saved_per_image:.0f}" if saved_per_image > 0 else "never"
    print(f"\nmodel.compile, {steps} timed train steps after {warmup}: {machine()}")
    print(
        table(
            ["finetune, in-memory data", "eager img/s", "compiled img/s", "ratio", "compile s", "break-even images"],
            [
                [
                    f"{args.backbone} @ {args.img}px, batch {args.batch}",
                    f"{eager:.1f}",
                    f"{compiled:.1f}",
                    f"**{compiled / eager:.2f}x**",
                    f"{compile_seconds:.1f}",
                    break_even,
                ]
            ],
        )
    )


if __name__ == "__main__":
    main()
