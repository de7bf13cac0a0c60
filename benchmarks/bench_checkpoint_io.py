"""Saving one checkpoint: Lightning's TorchCheckpointIO against tlcli's DirectCheckpointIO (tl_cli/run/).

The checkpoint is a model's state_dict with AdamW's state after one step, the bulk of what a `tlcli train` run
saves each epoch. The variants alternate, in turns, so drift in machine load and the first save's costs hit each;
the table gives the median save time, the ratio, and the extra peak memory of one save, each variant in a fresh
process (the rise of its peak RSS; n/a where /proc/self/clear_refs cannot reset the peak). Sizes in MiB.

    python -m benchmarks.bench_checkpoint_io [--model resnet18] [--repeats 7]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from benchmarks.common import machine, median, status_mib, table
from tl_cli.run.checkpoint_io import DirectCheckpointIO

VARIANTS = {"Lightning's TorchCheckpointIO": TorchCheckpointIO, "tlcli's DirectCheckpointIO": DirectCheckpointIO}


def make_checkpoint(model_name: str) -> dict:
    model = timm.create_model(model_name, num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()
    return {"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()], "epoch": 0}


def peak_rise_mib(model_name: str, variant: str) -> float | None:
    """Peak RSS during one save above the RSS just before it: Linux resets the peak (VmHWM) on writing 5 to
    /proc/self/clear_refs. None where it cannot (another OS, some sandboxes)."""
    checkpoint = make_checkpoint(model_name)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = status_mib("VmRSS")
    with tempfile.TemporaryDirectory() as folder:
        VARIANTS[variant]().save_checkpoint(checkpoint, Path(folder) / "x.ckpt")
    return status_mib("VmHWM") - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--peak", help=argparse.SUPPRESS)  # internal: one variant's peak rise, in this process
    args = parser.parse_args()
    if args.peak:
        print(peak_rise_mib(args.model, args.peak))
        return
    checkpoint = make_checkpoint(args.model)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.repeats):
            for variant, io in list(VARIANTS.items())[:: 1 if i % 2 else -1]:
                start = time.perf_counter()
                io().save_checkpoint(checkpoint, Path(folder) / "x.ckpt")
                times[variant].append(time.perf_counter() - start)
        size_mib = (Path(folder) / "x.ckpt").stat().st_size / 2**20
    print(
        f"# one checkpoint of {args.model} + AdamW state ({size_mib:.0f} MiB), {args.repeats} saves each; {machine()}"
    )
    base = median(times["Lightning's TorchCheckpointIO"])
    rows = []
    for variant in VARIANTS:
        command = [sys.executable, "-m", "benchmarks.bench_checkpoint_io", "--model", args.model, "--peak", variant]
        peak = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
        seconds = median(times[variant])
        rows.append(
            [
                variant,
                f"{seconds:.3f} s",
                f"{base / seconds:.2f}x",
                "n/a" if peak == "None" else f"{float(peak):.0f} MiB",
            ]
        )
    print(table(["checkpoint IO", "save, median", "speed vs Lightning's", "extra peak memory"], rows))


if __name__ == "__main__":
    main()
