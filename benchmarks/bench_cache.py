"""Frozen-feature cache: a 10-epoch `freeze` run end to end (real `tlcli` subprocesses), without the
cache, with a cold cache, and with a warm on-disk cache; same seed, so test accuracy must agree.

    python -m benchmarks.bench_cache
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

from benchmarks.common import machine, table

TLCLI = str(Path(sys.executable).with_name("tlcli"))
JOBS = {
    "digits (1293 train)": ["data=digits"],
    "fashion_mnist (5000 train, 6000 val, 10000 test)": ["data=fashion_mnist", "data.samples_per_class=500"],
    "fashion_mnist (54000 train, 6000 val, 10000 test)": ["data=fashion_mnist"],
}


def run(args: list[str], out: str) -> tuple[float, dict]:
    start = time.perf_counter()
    result = subprocess.run(
        [TLCLI, "train", *args], capture_output=True, text=True, env={**os.environ, "TLCLI_OUTPUT_DIR": out}
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    run_dir = result.stdout.strip().splitlines()[-1].removeprefix("run_dir: ")
    return wall, json.loads((Path(run_dir) / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="run only jobs whose name contains this text")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in JOBS.items():
            if args.only not in name:
                continue
            base = ["strategy=freeze", "data.augment=false", "trainer.max_epochs=10", *data]
            cache_dir = f"data.feature_cache_dir={tmp}/cache-{len(rows)}"
            plain_wall, plain = run([*base, "data.cache_features=false"], tmp)
            cold_wall, cold = run([*base, "data.cache_features=true", cache_dir], tmp)
            warm_wall, warm = run([*base, "data.cache_features=true", cache_dir], tmp)
            acc = plain["metrics"]["test/acc"]
            rows.append(
                [
                    name,
                    f"{plain_wall:.1f}",
                    f"{cold_wall:.1f} ({plain_wall / cold_wall:.1f}x)",
                    f"{warm_wall:.1f} ({plain_wall / warm_wall:.1f}x)",
                    f"{plain['train_seconds']:.1f} / {cold['train_seconds']:.1f} / {warm['train_seconds']:.1f}",
                    f"{acc:.4f} / {cold['metrics']['test/acc'] - acc:+.4f} / {warm['metrics']['test/acc'] - acc:+.4f}",
                ]
            )
            print(rows[-1], flush=True)
    print(f"\nfeature cache, strategy=freeze, 10 epochs, embedded source model: {machine()}")
    print(
        table(
            [
                "job",
                "no cache s",
                "cold cache s (speedup)",
                "warm disk cache s (speedup)",
                "fit s: none / cold / warm",
                "test acc / diff cold / diff warm",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
