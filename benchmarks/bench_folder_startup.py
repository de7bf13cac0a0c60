"""Image-folder start-up: process start -> first training step of `tlcli train data=image_folder` on a folder of
20,000 Fashion-MNIST PNGs, against the same run on a 200-image folder (the baseline). Start-up that does not
grow with the folder gives a ratio near 1. The folders are written once under the temp dir, never in the repo.

    python -m benchmarks.bench_folder_startup [--images 20000] [--repeats 2]
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
BASELINE_IMAGES = 200
# one training, validation and test batch: the run is start-up plus a few steps
TRAIN = ["experiment=smoke", "data=image_folder", "trainer.max_epochs=1", "+trainer.limit_train_batches=1"]
TRAIN += ["+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]


def write_folder(images: int) -> Path:
    """<tmp>/tlcli_bench_folder_<n>/<class>/<i>.png from Fashion-MNIST's train set; reused when complete."""
    import numpy as np
    from PIL import Image

    from tl_cli.data.datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT, _read_idx

    root = Path(tempfile.gettempdir()) / f"tlcli_bench_folder_{images}"
    done = root / ".complete"
    if done.is_file():
        return root
    pixels = _read_idx(Path(FASHION_MNIST_ROOT) / "train-images-idx3-ubyte.gz")[:images]
    labels = _read_idx(Path(FASHION_MNIST_ROOT) / "train-labels-idx1-ubyte.gz")[:images]
    for i, (image, label) in enumerate(zip(pixels, np.asarray(labels), strict=True)):
        folder = root / FASHION_MNIST_CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    done.touch()
    return root


def first_step(root: Path) -> tuple[float, float]:
    """(seconds from process start to the first training step, as summary.json reports it; wall seconds)."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = subprocess.run(
            [TLCLI, "train", *TRAIN, f"data.root={root}"],
            capture_output=True,
            text=True,
            env={**os.environ, "TLCLI_OUTPUT_DIR": out},
        )
        wall = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(result.stderr[-2000:])
        run_dir = Path(result.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))
        return json.loads((run_dir / "summary.json").read_text())["seconds_to_first_step"], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows, base = [], None
    for images in (BASELINE_IMAGES, args.images):
        root = write_folder(images)
        runs = [first_step(root) for _ in range(args.repeats)]
        first, wall = median([r[0] for r in runs]), median([r[1] for r in runs])
        base = base or first
        label = f"{images} PNGs" + (" (baseline)" if images == BASELINE_IMAGES else "")
        rows.append([label, f"{first:.2f}", f"{wall:.2f}", f"{first / base:.2f}"])
    print(f"\nimage-folder start-up: {machine()}")
    headers = ["folder", f"start -> first step, s (median of {args.repeats})", "whole run, s", "x baseline"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
