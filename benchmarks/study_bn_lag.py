"""Why the v1 study's digits `scratch` cell at 10 per class collapsed (0.670 ± 0.202): BatchNorm running statistics.

Trains that cell (digits, scratch, 10 images per class, lr 0.03, seeds 0-2) under protocol v1 (~30 optimizer
steps) and under v2 (>= 300 steps), then, for the v1 runs, recomputes every BatchNorm layer's running statistics
on the train images (train mode, cumulative average, no weight change) and tests again. If the recomputed
statistics recover the accuracy, the weights were fine and the eval-mode statistics had not caught up yet.

    python -m benchmarks.study_bn_lag            # ~2 min on 2 CPU cores
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

TLCLI = str(Path(sys.executable).with_name("tlcli"))
CELL = ["experiment=study_digits", "model.weights=null", "strategy=scratch", "data.samples_per_class=10"]
CELL += ["optim.lr=0.03", "data.min_samples_per_epoch=192", "trainer.enable_progress_bar=false"]
PROTOCOLS = {"v1 (~30 steps)": "optim.min_steps=0", "v2 (>= 300 steps)": "optim.min_steps=300"}


def train(out: Path, seed: int, steps: str) -> tuple[Path, float]:
    run = out / f"{steps.split('=')[1]}_{seed}"
    args = [TLCLI, "train", *CELL, steps, f"seed={seed}", f"hydra.run.dir={run}", "callbacks.progress_bar=null"]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    return run, float(re.search(r"^test/acc: ([\d.]+)$", result.stdout, re.M).group(1))


def test_acc(job) -> float:
    job.net.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in job.datamodule.eval_loader("test"):
            correct += int((job.net(job.datamodule.normalize(x)).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def recomputed_bn_acc(run: Path) -> float:
    """Test acc of the run's saved network after recomputing its BatchNorm statistics on the train images."""
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from tl_cli.config.paths import register_resolvers
    from tl_cli.run.training import build_job

    register_resolvers()
    job = build_job(OmegaConf.load(run / ".hydra" / "config.yaml"))
    job.net.load_state_dict(load_file(run / "model.safetensors"))
    for module in job.net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the pass instead of an exponential one
    job.net.train()
    with torch.no_grad():
        for x, _ in job.datamodule.eval_loader("train"):
            job.net(job.datamodule.normalize(x))
    return test_acc(job)


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        print("| protocol | seed | test acc | test acc, BN statistics recomputed on train |")
        print("|---|---:|---:|---:|")
        for name, steps in PROTOCOLS.items():
            for seed in (0, 1, 2):
                run, acc = train(Path(tmp), seed, steps)
                recomputed = f"{recomputed_bn_acc(run):.4f}" if steps.endswith("=0") else "-"
                print(f"| {name} | {seed} | {acc:.4f} | {recomputed} |", flush=True)


if __name__ == "__main__":
    main()
