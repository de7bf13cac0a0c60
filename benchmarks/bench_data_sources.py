"""Decode + transform throughput of the same 1,000 JPEG files read as a folder, a CSV list, a Hugging Face dataset
(save_to_disk, the JPEG bytes inside) and WebDataset tar shards, through tlcli's datamodule for each source.

64 px JPEGs, 10 classes; each source's train split is the 1,000 files (val and test are 20 other files each, so
nothing is held out of train). One pass of the train split through the eval transform (data.augment=false),
batch 64, 0 workers (or --workers N), no model. The four alternate `--rounds` times in one process; medians and
the ratio to the folder. Targets (issue 29): CSV and HF >= 0.9x the folder, WebDataset >= 1.0x.

    python -m benchmarks.bench_data_sources [--rounds 5] [--images 1000]
"""

from __future__ import annotations

import argparse
import csv
import io
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from benchmarks.common import machine, median, table

DATA_CONFIG = {
    "input_size": (3, 64, 64),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
}
CLASSES = 10
SPLIT_FILES = {"val": 20, "test": 20}


def jpeg(rng: np.random.Generator, label: int) -> bytes:
    """A 64 px JPEG: a class tint over smooth noise (compresses like a photo, not like pure noise)."""
    coarse = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((64, 64), Image.BILINEAR)
    tint = Image.new("RGB", (64, 64), (25 * label, 128, 255 - 25 * label))
    out = io.BytesIO()
    Image.blend(image, tint, 0.3).save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_files(root: Path, counts: dict[str, int]) -> dict[str, list[tuple[str, int, bytes]]]:
    """root/folder/<split>/<class>/<i>.jpg; returns (path, label, bytes) per split."""
    rng = np.random.default_rng(0)
    files: dict[str, list[tuple[str, int, bytes]]] = {}
    for split, count in counts.items():
        files[split] = []
        for i in range(count):
            label = i % CLASSES
            path = root / "folder" / split / f"c{label}" / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = jpeg(rng, label)
            path.write_bytes(data)
            files[split].append((str(path), label, data))
    return files


def write_csvs(root: Path, files: dict) -> dict[str, str]:
    keys = {}
    for split, rows in files.items():
        table_path = root / f"{split}.csv"
        with open(table_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows((path, f"c{label}") for path, label, _ in rows)
        keys[f"data.{split}"] = str(table_path)
    return keys


def write_hf(root: Path, files: dict) -> str:
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"c{i}" for i in range(CLASSES)])}
    )
    tables = {
        split: datasets.Dataset.from_dict(
            {"image": [{"bytes": data, "path": None} for _, _, data in rows], "label": [y for _, y, _ in rows]},
            features=features,
        )
        for split, rows in files.items()
    }
    datasets.DatasetDict(tables).save_to_disk(str(root / "hf"))
    return str(root / "hf")


def write_shards(root: Path, files: dict, per_shard: int = 100) -> dict[str, str]:
    (root / "shards").mkdir()
    keys = {}
    for split, rows in files.items():
        count = 0
        for start in range(0, len(rows), per_shard):
            with tarfile.open(root / "shards" / f"{split}-{count:06d}.tar", "w") as tar:
                for i, (_, label, data) in enumerate(rows[start : start + per_shard], start):
                    for ext, payload in (("jpg", data), ("cls", str(label).encode())):
                        info = tarfile.TarInfo(f"{split}{i:06d}.{ext}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
            count += 1
        keys[f"data.{split}"] = str(root / "shards" / f"{split}-{{000000..{count - 1:06d}}}.tar")
    return keys


def datamodule(name: str, keys: dict[str, str]):
    from tl_cli.config.schema import DataConfig
    from tl_cli.data.datamodule import TransferDataModule

    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": name, "augment": False, "num_workers": 0})
    for key, value in keys.items():
        OmegaConf.update(cfg, key.removeprefix("data."), value)
    dm = TransferDataModule(cfg, dict(DATA_CONFIG), seed=0)
    dm.prepare_splits()
    return dm


def pass_seconds(dataset, workers: int) -> tuple[float, int]:
    start, seen = time.perf_counter(), 0
    for images, _ in DataLoader(dataset, batch_size=64, num_workers=workers):
        seen += len(images)
    return time.perf_counter() - start, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (shards: one per worker)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_files(root, {"train": args.images, **SPLIT_FILES})
        sources = {
            "folder (data=image_folder)": datamodule("image_folder", {"data.root": str(root / "folder")}),
            "CSV (data=csv)": datamodule("csv", write_csvs(root, files)),
            "HF save_to_disk (data=hf)": datamodule("hf", {"data.dataset": write_hf(root, files)}),
            "WebDataset shards (data=webdataset)": datamodule("webdataset", write_shards(root, files)),
        }
        seconds: dict[str, list[float]] = {name: [] for name in sources}
        for _ in range(args.rounds):  # alternate, so drift in machine load hits every source
            for name, dm in sources.items():
                took, seen = pass_seconds(dm.dataset("train"), args.workers)
                assert seen == args.images, (name, seen)  # every source serves every file once
                seconds[name].append(took)
    base = median(seconds[next(iter(sources))])
    rows = [
        [n, f"{args.images / median(s):.0f}", f"{base / median(s):.2f}x", " / ".join(f"{x:.3f}" for x in s)]
        for n, s in seconds.items()
    ]
    print(f"# decode + eval transform, {args.images} JPEGs at 64 px, batch 64, {args.workers} workers; {machine()}")
    print(table(["source", "median images/s", "vs folder", "each round s"], rows))


if __name__ == "__main__":
    main()
