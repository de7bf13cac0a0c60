"""The train data path alone: timm's one-step transform (a float tensor and Normalize per image) against tlcli's
two steps (uint8 per image, tl_cli/data/transforms.py; normalized per batch), on bench_vs_timm's recipe.

One epoch of an ImageFolder of Fashion-MNIST PNGs (2,000 images, 64 px, batch 64, 0 workers, the recipe's
RandomResizedCrop, flip and colour jitter), through tlcli's dataset and a DataLoader, up to the channels_last
float batch the network takes; no model. The two alternate `--rounds` times in one process; medians and the ratio.

    python -m benchmarks.bench_data_path [--rounds 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.bench_vs_timm import write_folder
from benchmarks.common import machine, median, table

DATA_CONFIG = {
    "input_size": (3, 64, 64),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
}
AUG = {"scale": (0.08, 1.0), "hflip": 0.5, "color_jitter": 0.4}


def epoch_seconds(dataset, to_input) -> float:
    loader = DataLoader(dataset, batch_size=64, shuffle=True)
    start = time.perf_counter()
    for images, _ in loader:
        to_input(images).contiguous(memory_format=torch.channels_last)
    return time.perf_counter() - start


def main() -> None:
    from timm.data import create_transform

    from tl_cli.data.datamodule import TransformedSubset
    from tl_cli.data.datasets import FolderImages
    from tl_cli.data.transforms import BatchNormalize, build_transforms

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    train_config = {k: v for k, v in DATA_CONFIG.items() if k != "crop_pct"}
    one_step = create_transform(**train_config, is_training=True, **AUG)
    per_image, _ = build_transforms(DATA_CONFIG, True, AUG)
    per_batch = BatchNormalize.for_data(DATA_CONFIG, True, AUG)
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp), {"train": 200, "val": 0})  # val (and its test copy) empty: train only
        base = FolderImages(Path(tmp) / "train")
        indices, labels = np.arange(len(base)), {c: c for c in range(10)}
        paths = {
            "timm one step (float per image)": (TransformedSubset(base, indices, labels, "RGB", one_step), lambda x: x),
            "tlcli two steps (uint8 per image, per batch)": (
                TransformedSubset(base, indices, labels, "RGB", per_image),
                lambda x: per_batch(x, train=True),
            ),
        }
        seconds: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(rounds):  # alternate, so drift in machine load hits both
            for name, (dataset, to_input) in paths.items():
                seconds[name].append(epoch_seconds(dataset, to_input))
    base_s = median(seconds[next(iter(paths))])
    rows = [
        [n, f"{median(s):.2f}", f"{base_s / median(s):.2f}x", " / ".join(f"{x:.2f}" for x in s)]
        for n, s in seconds.items()
    ]
    print(f"# train data path, {len(indices)} images at 64 px, one epoch; {machine()}")
    print(table(["path", "median s", "speed vs one step", "each round s"], rows))


if __name__ == "__main__":
    main()
