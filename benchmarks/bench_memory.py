"""Memory over a long run: RSS of a 50-epoch `tlcli train` (smoke config, embedded source model),
sampled every 0.25 s; growth = peak RSS of the last 20% of the run minus peak RSS of epochs' first 20%.

    python -m benchmarks.bench_memory [--epochs 50]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, status_mib, table

TLCLI = str(Path(sys.executable).with_name("tlcli"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            TLCLI,
            "train",
            "experiment=smoke",
            "model=embedded",
            "data.augment=true",
            f"trainer.max_epochs={args.epochs}",
            f"hydra.run.dir={tmp}/run",
        ]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TLCLI_OUTPUT_DIR": tmp}
        )
        samples: list[tuple[float, float]] = []
        while proc.poll() is None:
            if (value := status_mib("VmRSS", proc.pid)) is not None and (Path(tmp) / "run" / "checkpoints").exists():
                samples.append((time.perf_counter(), value))  # from the first checkpoint on: training
            time.sleep(0.25)
        if proc.returncode != 0 or len(samples) < 10:
            raise SystemExit(f"run failed or too short (rc={proc.returncode}, {len(samples)} samples)")
    n = len(samples)
    early = max(v for _, v in samples[: n // 5])
    late = max(v for _, v in samples[-n // 5 :])
    rows = [
        [
            f"{args.epochs} epochs, {n} samples",
            f"{early:.0f}",
            f"{late:.0f}",
            f"{late - early:+.1f}",
            f"{(late - early) / early * 100:+.1f}%",
        ]
    ]
    print(f"\nmemory over a long run: {machine()}")
    print(table(["run", "peak RSS first 20% (MB)", "peak RSS last 20% (MB)", "growth (MB)", "growth"], rows))


if __name__ == "__main__":
    main()
