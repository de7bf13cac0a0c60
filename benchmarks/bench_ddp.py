"""Data-parallel overhead on CPU with gloo: the same job as 2 ranks against 1 process, same global batch and steps.

    python -m benchmarks.bench_ddp [--repeats 2] [--epochs 3]

The job is `tlcli train` on its embedded default (the Fashion-MNIST source, digits, extend_finetune) in fp32, with
`test=false`. One process runs at data.batch_size=64 with all the machine's cores as torch threads; 2 ranks
(`trainer.devices=2`, gloo) run at 32 each, one torch thread each: the same global batch, the same optimizer
steps. Rounds alternate the order. Prints each run's wall time (process start to exit) and train images/s
(summary.json: all ranks, validation left out), and the ratios of the medians (1-process time over 2-rank time:
above 1 means the 2 ranks were faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, median, table

TLCLI = str(Path(sys.executable).with_name("tlcli"))
JOB = ["trainer.precision=32-true", "test=false", "trainer.accelerator=cpu"]
CORES = os.cpu_count() or 1
VARIANTS = {  # name: (overrides, torch threads per process)
    "1 process, batch 64": (["data.batch_size=64"], CORES),
    "2 ranks (gloo), batch 32 each": (["data.batch_size=32", "trainer.devices=2"], max(1, CORES // 2)),
}


def run(overrides: list[str], threads: int, epochs: int, out: Path) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TLCLI_OUTPUT_DIR": str(out)}
    args = [TLCLI, "train", *JOB, f"trainer.max_epochs={epochs}", *overrides, f"hydra.run.dir={out / 'run'}"]
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"tlcli train {' '.join(overrides)} failed:\n{result.stderr[-2000:]}")
    summary = json.loads((out / "run" / "summary.json").read_text())
    return {"wall": wall, "images_s": summary["train_images_per_second"], "val_acc": summary["metrics"]["val/acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            names = list(VARIANTS) if round_ % 2 == 0 else list(reversed(VARIANTS))
            for name in names:
                overrides, threads = VARIANTS[name]
                out = Path(tmp) / f"{round_}-{list(VARIANTS).index(name)}"  # a fresh folder per run
                results[name].append(run(overrides, threads, args.epochs, out))
    print(f"# data-parallel on CPU with gloo ({machine()}), {args.epochs} epochs, {args.repeats} rounds\n")
    rows = [
        [
            name,
            " / ".join(f"{r['wall']:.1f}" for r in runs),
            f"{median([r['images_s'] for r in runs]):.0f}",
            f"{median([r['val_acc'] for r in runs]):.4f}",
        ]
        for name, runs in results.items()
    ]
    print(table(["variant", "wall s (each round)", "train images/s (median)", "val acc"], rows))
    one, two = (results[name] for name in VARIANTS)
    wall = median([r["wall"] for r in one]) / median([r["wall"] for r in two])
    rate = median([r["images_s"] for r in two]) / median([r["images_s"] for r in one])
    print(f"\n2 ranks / 1 process: wall {wall:.2f}x, train images/s {rate:.2f}x (above 1: the 2 ranks are faster)")


if __name__ == "__main__":
    main()
