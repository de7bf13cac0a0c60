"""Framework tax: tlcli's Lightning training loop vs a minimal hand-written PyTorch loop.

Same TransferNet (finetune: everything trains), same optimizer groups, batch, precision and in-memory
data, same process. The tlcli side is a real Lightning Trainer with tlcli's module, its configured
callbacks (progress bar, LR monitor), logger and own callbacks.

The two loops run in lockstep: before each tlcli step, a callback runs one step of the raw loop (its own
copy of the net, optimizer and DataLoader). Each tlcli step is timed from the end of that raw step to the
start of the next, so it covers its data fetch, every hook and the optimizer. Paired steps milliseconds
apart see the same machine state; separate alternating runs on this shared 2-core machine drifted by
±10 % between runs, more than the overhead being measured. Speed is batch / median step time.

    python -m benchmarks.bench_throughput [--quick] [--precision 32-true]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import machine, median, table
from tl_cli.run.training import make_trainer
from tl_cli.transfer.module import TransferModule
from tl_cli.transfer.network import TransferNet
from tl_cli.transfer.strategies import param_groups

OPTIM = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "momentum": 0.9, "scheduler": "constant"}


def make_net(backbone: str, img: int, channels_last: bool) -> TransferNet:
    kwargs = {"img_size": img} if "vit" in backbone else {}
    net = TransferNet(timm.create_model(backbone, num_classes=0, **kwargs), num_classes=10)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def loader(img: int, batch: int, steps: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch * steps, 3, img, img, generator=g)
    y = torch.randint(0, 10, (batch * steps,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True)


def raw_stepper(backbone, img, batch, steps, precision, channels_last) -> Callable[[], None]:
    """The minimal loop, one step per call: fetch, forward, loss, backward, step."""
    from timm.optim import create_optimizer_v2

    net = make_net(backbone, img, channels_last).train()
    groups = param_groups(net, OPTIM["lr"], 1.0, OPTIM["weight_decay"])
    opt = create_optimizer_v2(groups, opt="adamw", lr=OPTIM["lr"], weight_decay=OPTIM["weight_decay"])
    bf16 = precision == "bf16-mixed"
    batches = iter(loader(img, batch, steps))

    def step() -> None:
        x, y = next(batches)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def raw_loop(backbone, img, batch, steps, warmup, precision, channels_last) -> float:
    """Images/s of the raw loop alone (batch / median step time after warmup)."""
    step = raw_stepper(backbone, img, batch, steps, precision, channels_last)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch / median(times[warmup:])


class Lockstep(L.Callback):
    """Runs one raw step at the start of every tlcli step and times both."""

    def __init__(self, raw_step: Callable[[], None]) -> None:
        self.raw_step = raw_step
        self.raw: list[float] = []
        self.tlcli: list[float] = []
        self._tlcli_start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        start = time.perf_counter()
        if self._tlcli_start is not None:
            self.tlcli.append(start - self._tlcli_start)
        self.raw_step()
        self._tlcli_start = time.perf_counter()
        self.raw.append(self._tlcli_start - start)


def tlcli_callbacks_and_loggers(tmp: str) -> tuple[list, list]:
    """The callbacks and loggers `tlcli train` configures by default (checkpointing aside: no val here)."""
    from hydra import compose, initialize_config_dir

    from tl_cli.config.checks import instantiate_group
    from tl_cli.config.paths import config_dir, register_resolvers
    from tl_cli.config.schema import register_schemas
    from tl_cli.run.training import run_callbacks

    register_schemas()
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp}", "~callbacks.model_checkpoint"])
    callbacks, _ = run_callbacks(cfg, Path(tmp))
    return callbacks, instantiate_group(cfg.logger, "logger")


def lockstep(backbone, img, batch, steps, warmup, precision, channels_last) -> tuple[float, float]:
    """(raw, tlcli) images/s from one Trainer run with the raw loop stepping alongside."""
    net = make_net(backbone, img, channels_last)
    module = TransferModule(net, 10, OPTIM, backbone_lr_mult=1.0, backbone=backbone)
    module.channels_last = channels_last
    timer = Lockstep(raw_stepper(backbone, img, batch, steps, precision, channels_last))
    with tempfile.TemporaryDirectory() as tmp:
        callbacks, loggers = tlcli_callbacks_and_loggers(tmp)
        trainer, _ = make_trainer(
            dict(
                accelerator="cpu",
                devices=1,
                max_steps=steps,
                precision=precision,
                enable_checkpointing=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                limit_val_batches=0,
                log_every_n_steps=10,
            ),
            channels_last,
            [timer, *callbacks],  # first: the other hooks count as tlcli's time
            loggers,
        )
        trainer.fit(module, train_dataloaders=loader(img, batch, steps))
    return batch / median(timer.raw[warmup:]), batch / median(timer.tlcli[warmup:])


CASES = [  # backbone, image size, batch, timed steps (under a minute per run on 2 cores)
    ("resnet18", 64, 64, 60),
    ("test_resnet", 32, 64, 300),
    ("vit_tiny_patch16_224", 64, 64, 60),
]


def main() -> None:
    from tl_cli import hardware

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--precision", default="auto", help="auto: tlcli's default for this machine")
    args = parser.parse_args()
    precision, channels_last, _ = hardware.resolve(args.precision, "auto", "cpu")
    warmup, repeats = (3, 1) if args.quick else (10, 3)
    rows = []
    for backbone, img, batch, steps in CASES:
        steps = steps // 5 if args.quick else steps
        runs = [
            lockstep(backbone, img, batch, warmup + steps, warmup, precision, channels_last) for _ in range(repeats)
        ]
        ratios = sorted(ours / raw for raw, ours in runs)
        raw, ours = median([r for r, _ in runs]), median([o for _, o in runs])
        rows.append(
            [
                f"{backbone} @ {img}px, batch {batch}",
                f"{raw:.0f}",
                f"{ours:.0f}",
                f"**{median(ratios):.3f}**",
                " / ".join(f"{r:.3f}" for r in ratios),
            ]
        )
        print(rows[-1], flush=True)
    print(f"\nframework tax ({precision}{', channels_last' if channels_last else ''}, lockstep): {machine()}")
    print(table(["finetune, in-memory data", "raw loop img/s", "tlcli img/s", "ratio", "ratio per run"], rows))


if __name__ == "__main__":
    main()
