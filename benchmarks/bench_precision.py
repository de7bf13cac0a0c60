"""Precision and memory format on this machine: fp32 vs bf16-mixed vs bf16-mixed + channels_last.

Raw training-loop images/s (finetune, in-memory data) per backbone and input size; the ratio column is
against fp32 in the same run. This is the measurement behind tlcli's `trainer.precision=auto` rule.

    python -m benchmarks.bench_precision [--quick]
"""

from __future__ import annotations

import argparse

from benchmarks.bench_throughput import raw_loop
from benchmarks.common import machine, median, table

CASES = [("test_resnet", 32, 64), ("resnet18", 64, 64), ("resnet18", 224, 32), ("vit_tiny_patch16_224", 224, 32)]
SETTINGS = [("32-true", False), ("bf16-mixed", False), ("bf16-mixed", True)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps, warmup, repeats = (8, 2, 1) if args.quick else (14, 4, 2)
    rows = []
    for backbone, img, batch in CASES:
        speeds = {}
        for _ in range(repeats):
            for precision, cl in SETTINGS:
                speeds.setdefault((precision, cl), []).append(
                    raw_loop(backbone, img, batch, steps, warmup, precision, cl)
                )
        base = median(speeds[SETTINGS[0]])
        row = [f"{backbone} @ {img}px"]
        for setting in SETTINGS:
            s = median(speeds[setting])
            row.append(f"{s:.0f} ({s / base:.2f}x)")
        rows.append(row)
        print(row, flush=True)
    print(f"\nprecision / memory format: {machine()}")
    print(table(["finetune, raw loop img/s", "fp32", "bf16-mixed", "bf16-mixed + channels_last"], rows))


if __name__ == "__main__":
    main()
