"""Framework tax: tlcli's Lightning training loop vs a minimal hand-written PyTorch loop.

Same TransferNet (finetune: everything trains), same optimizer groups, batch, precision and in-memory
DataLoader, same process; runs alternate (raw, tlcli, raw, tlcli, ...) and the median images/s is compared.
Timing windows skip the first `warmup` steps of each run.

    python benchmarks/bench_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

import lightning as L
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import machine, median, table
from tl_cli.module import TransferModule
from tl_cli.network import TransferNet
from tl_cli.strategies import param_groups

OPTIM = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "momentum": 0.9, "scheduler": "constant"}


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.images = warmup, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.images += len(batch[1])
            self.end = time.perf_counter()


def make_net(backbone: str, img: int, channels_last: bool) -> TransferNet:
    kwargs = {"img_size": img} if "vit" in backbone else {}
    net = TransferNet(timm.create_model(backbone, num_classes=0, **kwargs), num_classes=10)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def loader(img: int, batch: int, steps: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch * steps, 3, img, img, generator=g)
    y = torch.randint(0, 10, (batch * steps,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True)


def raw_loop(backbone, img, batch, steps, warmup, precision, channels_last) -> float:
    """The minimal loop: forward, loss, backward, step."""
    from timm.optim import create_optimizer_v2

    net = make_net(backbone, img, channels_last).train()
    groups = param_groups(net, OPTIM["lr"], 1.0, OPTIM["weight_decay"])
    opt = create_optimizer_v2(groups, opt="adamw", lr=OPTIM["lr"], weight_decay=OPTIM["weight_decay"])
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()
    start, images = 0.0, 0
    for i, (x, y) in enumerate(loader(img, batch, steps)):
        if i == warmup:
            start = time.perf_counter()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            images += len(y)
    return images / (time.perf_counter() - start)


def tlcli_loop(backbone, img, batch, steps, warmup, precision, channels_last) -> float:
    """tlcli's module with its default callbacks and CSV logger, under a real Lightning Trainer."""
    from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    net = make_net(backbone, img, channels_last)
    module = TransferModule(net, 10, OPTIM, backbone_lr_mult=1.0, backbone=backbone)
    module.channels_last = channels_last
    timer = StepTimer(warmup)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=steps,
            precision=precision,
            logger=CSVLogger(tmp, name=""),
            callbacks=[timer, TQDMProgressBar(), LearningRateMonitor("epoch")],
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            log_every_n_steps=10,
        )
        trainer.fit(module, train_dataloaders=loader(img, batch, steps))
    return timer.images / (timer.end - timer.start)


CASES = [  # backbone, image size, batch
    ("resnet18", 64, 64),
    ("test_resnet", 32, 64),
    ("vit_tiny_patch16_224", 64, 64),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    steps, warmup, repeats = (12, 3, 2) if args.quick else (30, 5, 3)
    rows = []
    for backbone, img, batch in CASES:
        raw, ours = [], []
        for _ in range(repeats):  # alternate, so drift on a noisy machine hits both equally
            raw.append(raw_loop(backbone, img, batch, steps, warmup, args.precision, args.channels_last))
            ours.append(tlcli_loop(backbone, img, batch, steps, warmup, args.precision, args.channels_last))
        r, o = median(raw), median(ours)
        rows.append([f"{backbone} @ {img}px, batch {batch}", f"{r:.0f}", f"{o:.0f}", f"{o / r:.3f}"])
        print(rows[-1], flush=True)
    print(f"\nframework tax ({args.precision}{', channels_last' if args.channels_last else ''}): {machine()}")
    print(table(["finetune, in-memory data", "raw loop img/s", "tlcli img/s", "ratio tlcli/raw"], rows))


if __name__ == "__main__":
    main()
