"""tlcli against timm's own train.py (../shared/peers/timm_train.py), same recipe, end to end.

The recipe is ../shared/peers/README.md's: an ImageFolder of Fashion-MNIST PNGs (10 classes, 200 train + 50 val
per class), resnet18 from one source weights file, 64 px, batch 64, 3 epochs, AdamW 1e-3, weight decay 0.05,
cosine, channels_last, 0 workers, the same augmentation, seed 1. bf16 autocast where the CPU has native bf16
(tlcli's `trainer.precision=auto` rule), else fp32 for both. tlcli runs with `optim.min_steps=0`: timm's script
has no minimum, and the recipe's 93 steps are below tlcli's default of 300. image_folder's default
augmentation is the recipe's. A second recipe swaps resnet18 for a ViT (vit_tiny_patch16_224 created at 64 px,
AdamW 5e-4); everything else stays.

    python -m benchmarks.bench_vs_timm [--repeats 3] [--recipes resnet18,vit_tiny]

tlcli runs twice: as is (it then tests the best checkpoint, a pass timm's script does not make) and with
`test=false` (the same work as timm's script). Each round runs all three, in an order rotated every round
(balanced when --repeats is a multiple of 3).
Prints each tool's wall time (process start to exit), CPU time (user + system), train images/s in its own loop
(timm: each epoch's mean rate from its last log line, averaged over epochs; tlcli: summary.json; both count data
loading and exclude validation), and val accuracy, then the ratios of the medians and of each round's pair
(timm's wall over tlcli's in the same round: slow drift in the machine's load cancels in a pair). Exits 0 with a
message when the peer script is absent.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import machine, table

PEER = Path(__file__).resolve().parents[2] / "shared" / "peers" / "timm_train.py"
TLCLI = str(Path(sys.executable).with_name("tlcli"))
TLCLI_DEFAULT = "tlcli train"
# timm's script makes no test pass; with test=false tlcli does the same work (its sanity check aside)
TLCLI_UNTESTED = "tlcli train test=false"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def write_folder(root: Path, per_split: dict[str, int]) -> None:
    """Fashion-MNIST PNGs in root/<split>/<class>/<i>.png: the first n train images of each class."""
    from PIL import Image

    with gzip.open(FMNIST / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FMNIST / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    start = 0
    for split, n in per_split.items():
        for c in range(10):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, idx in enumerate(np.flatnonzero(labels == c)[start : start + n]):
                Image.fromarray(images[idx]).save(folder / f"{i}.png")
        start += n
    shutil.copytree(root / "val", root / "test")  # the recipe tests on val, so tlcli holds nothing out of train


@dataclass(frozen=True)
class Recipe:
    """What differs between the side-by-side recipes; everything else is ../shared/peers/README.md's."""

    model: str
    lr: float
    model_kwargs: tuple[tuple[str, int], ...] = ()  # at creation, for both tools (a ViT's img_size)


RECIPES = {
    "resnet18": Recipe("resnet18", 1e-3),
    # a ViT at 64 px (16 tokens of 16 px): vit_tiny's 5.7 M parameters; 224 px does not fit 2 CPU cores' budget
    "vit_tiny": Recipe("vit_tiny_patch16_224", 5e-4, (("img_size", 64),)),
}


def write_source(path: Path, recipe: Recipe) -> None:
    """The "source weights" both tools start from: the architecture's initial weights at the recipe's size."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(timm.create_model(recipe.model, **dict(recipe.model_kwargs)).state_dict(), str(path))


def timm_args(recipe: Recipe, data: Path, source: Path, out: Path, bf16: bool) -> list[str]:
    """timm train.py's command line for the recipe."""
    args = [sys.executable, str(PEER), "--data-dir", str(data), "--train-split", "train", "--val-split", "val"]
    args += ["--model", recipe.model, "--pretrained", "--pretrained-path", str(source), "--num-classes", "10"]
    args += ["--img-size", "64", "-b", "64", "--epochs", "3", "--opt", "adamw", "--lr", str(recipe.lr)]
    args += ["--model-kwargs", *(f"{k}={v}" for k, v in recipe.model_kwargs)] if recipe.model_kwargs else []
    args += ["--weight-decay", "0.05", "--sched", "cosine", "--warmup-epochs", "0", "--cooldown-epochs", "0"]
    args += ["--smoothing", "0", "--device", "cpu", "--channels-last", "-j", "0", "--crop-pct", "1.0"]
    args += ["--scale", "0.08", "1.0", "--color-jitter", "0.4", "--hflip", "0.5", "--seed", "1"]
    args += ["--output", str(out), "--experiment", "run", "--log-interval", "1000", "--checkpoint-hist", "1"]
    args += ["--amp", "--amp-dtype", "bfloat16"] if bf16 else []
    return args


TIMM_EPOCH_RATE = r"Train: \d+ \[.*?\(100%\)\].*?/s\s+\([\d.]+s,\s*([\d.]+)/s\)"


def timed_run(args: list[str], what: str) -> tuple[subprocess.CompletedProcess, dict[str, float]]:
    """Run one tool to its exit: its output, wall time and CPU time (user + system, the process and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        raise SystemExit(f"{what} failed:\n{result.stderr[-2000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return result, {"wall": wall, "cpu": cpu}


def run_timm(recipe: Recipe, data: Path, source: Path, out: Path, bf16: bool) -> dict[str, float]:
    result, times = timed_run(timm_args(recipe, data, source, out, bf16), "timm train.py")
    # the epoch's last log line: "Time: <last step>s, <rate>/s  (<mean step>s, <mean rate>/s)"; the mean rate is
    # over every update of the epoch, data loading included, as tlcli's summary.json figure
    rates = [float(r) for r in re.findall(TIMM_EPOCH_RATE, result.stdout + result.stderr)]
    rows = list(csv.DictReader(open(out / "run" / "summary.csv")))
    return {
        **times,
        "images_s": statistics.fmean(rates) if rates else float("nan"),
        "val_acc": float(rows[-1]["eval_top1"]) / 100,
    }


def tlcli_args(recipe: Recipe, data: Path, source: Path, out: Path, bf16: bool) -> list[str]:
    """tlcli train's command line for the same recipe."""
    args = [TLCLI, "train", "data=image_folder", f"data.root={data}", "model=timm", f"model.backbone={recipe.model}"]
    args += [f"model.weights={source}", "model.img_size=64", "data.batch_size=64", "trainer.max_epochs=3"]
    args += ["strategy=finetune", "strategy.backbone_lr_mult=1.0", f"optim.lr={recipe.lr}", "optim.weight_decay=0.05"]
    args += ["data.num_workers=0", "data.crop_pct=1.0", "seed=1", "model.channels_last=true", "optim.min_steps=0"]
    args += [f"trainer.precision={'bf16-mixed' if bf16 else '32-true'}", f"hydra.run.dir={out}"]
    args += [
        "data.aug.scale=[0.08,1.0]",
        "data.aug.hflip=0.5",
        "data.aug.color_jitter=0.4",
    ]
    return args


def run_tlcli(recipe: Recipe, data: Path, source: Path, out: Path, bf16: bool, *extra: str) -> dict[str, float]:
    _, times = timed_run(tlcli_args(recipe, data, source, out, bf16) + list(extra), "tlcli train")
    summary = json.loads((out / "summary.json").read_text())
    return {**times, "images_s": summary["train_images_per_second"], "val_acc": summary["metrics"]["val/acc"]}


def side_by_side(recipe: Recipe, tmp_path: Path, repeats: int, bf16: bool) -> None:
    """Both tools on one recipe, in `repeats` rounds; the medians, and the ratios of each round's pair."""
    source = tmp_path / f"{recipe.model}.safetensors"
    write_source(source, recipe)
    data = tmp_path / "data"
    runs = {
        "timm train.py": lambda i: run_timm(recipe, data, source, tmp_path / f"t{recipe.model}{i}", bf16),
        TLCLI_DEFAULT: lambda i: run_tlcli(recipe, data, source, tmp_path / f"l{recipe.model}{i}", bf16),
        TLCLI_UNTESTED: lambda i: run_tlcli(recipe, data, source, tmp_path / f"u{recipe.model}{i}", bf16, "test=false"),
    }
    results: dict[str, list[dict[str, float]]] = {tool: [] for tool in runs}
    for i in range(repeats):  # each round all three, the order rotated, so drift in machine load hits each
        for tool in list(runs)[i % 3 :] + list(runs)[: i % 3]:
            results[tool].append(runs[tool](i))
    med = {tool: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for tool, rs in results.items()}
    rows = [
        [tool, f"{m['wall']:.1f} s", " / ".join(f"{r['wall']:.1f}" for r in results[tool]), f"{m['cpu']:.1f} s"]
        + [f"{m['images_s']:.0f}", f"{m['val_acc']:.3f}"]
        for tool, m in med.items()
    ]
    print(f"\n{recipe.model}, lr {recipe.lr:g}, {dict(recipe.model_kwargs) or ''}")
    headers = ["tool", "wall, end to end", "wall per run, s", "CPU time", "train images/s (own loop)", "val acc"]
    print(table(headers, rows))
    timm_runs, timm_m = results["timm train.py"], med["timm train.py"]
    for tool in (TLCLI_DEFAULT, TLCLI_UNTESTED):
        mine = med[tool]
        paired = [t["wall"] / r["wall"] for t, r in zip(timm_runs, results[tool], strict=True)]
        speed = (
            f"end to end {timm_m['wall'] / mine['wall']:.2f}x (each round's pair: "
            f"{' / '.join(f'{x:.2f}' for x in paired)}, median {statistics.median(paired):.2f}x), "
            f"CPU time {timm_m['cpu'] / mine['cpu']:.2f}x, in the loop {mine['images_s'] / timm_m['images_s']:.2f}x"
        )
        accuracy = f"val acc {mine['val_acc'] - timm_m['val_acc']:+.3f}"
        print(f"{tool} / timm: {speed} (> 1: tlcli faster, or less CPU); {accuracy}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    args = parser.parse_args()
    if not PEER.is_file():
        print(f"bench_vs_timm: skipped, {PEER} is absent (timm's train.py, the peer to measure against)")
        return
    from tl_cli.hardware import cpu_has_native_bf16

    bf16 = cpu_has_native_bf16()
    print(f"# tlcli vs timm train.py ({'bf16 autocast' if bf16 else 'fp32: no native bf16 on this CPU'}); {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp) / "data", {"train": 200, "val": 50})
        for name in args.recipes.split(","):
            side_by_side(RECIPES[name], Path(tmp), args.repeats, bf16)


if __name__ == "__main__":
    main()
