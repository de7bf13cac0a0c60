"""On one CUDA GPU: tlcli against timm's train.py (../shared/peers/timm_train.py) and a raw PyTorch loop, resnet50
at 224 px in bf16 on generated images. Part of `make gpu-check` (docs/scaling.md); says so and exits 0 without CUDA.

    python -m benchmarks.bench_gpu [--epochs 2] [--per-class 64]

The data: an ImageFolder of generated JPEGs (10 classes, `--per-class` train and a quarter as many val images per
class, 256 px, decoded and cropped to 224 by each tool). Both tools: batch 64, AdamW 1e-3, weight decay 0.05,
cosine, bf16 autocast, channels_last, 8 workers, the same augmentation, seed 1, the same source weights file.
The raw loop (benchmarks.bench_throughput's, on the GPU) trains on tensors already in memory: the ceiling without
data loading. Prints each tool's wall time and train images/s and the ratios.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_vs_timm import PEER, TIMM_EPOCH_RATE, timed_run
from benchmarks.common import machine, table

TLCLI = str(Path(sys.executable).with_name("tlcli"))
MODEL, IMG, BATCH, WORKERS = "resnet50", 224, 64, 8


def write_images(root: Path, per_class: int) -> None:
    """Seeded random JPEGs in root/{train,val}/<class>/ (val also serves as tlcli's test split)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", max(1, per_class // 4))):
        for c in range(10):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    (root / "test").symlink_to(root / "val")


def timm_cmd(data: Path, source: Path, out: Path, epochs: int) -> list[str]:
    args = [sys.executable, str(PEER), "--data-dir", str(data), "--train-split", "train", "--val-split", "val"]
    args += ["--model", MODEL, "--pretrained", "--pretrained-path", str(source), "--num-classes", "10"]
    args += ["--img-size", str(IMG), "-b", str(BATCH), "--epochs", str(epochs), "--opt", "adamw", "--lr", "1e-3"]
    args += ["--weight-decay", "0.05", "--sched", "cosine", "--warmup-epochs", "0", "--cooldown-epochs", "0"]
    args += ["--smoothing", "0", "--device", "cuda", "--channels-last", "-j", str(WORKERS), "--seed", "1"]
    args += ["--amp", "--amp-dtype", "bfloat16", "--output", str(out), "--experiment", "run"]
    return [*args, "--log-interval", "1000", "--checkpoint-hist", "1"]


def tlcli_cmd(data: Path, source: Path, out: Path, epochs: int) -> list[str]:
    args = [TLCLI, "train", "data=image_folder", f"data.root={data}", "model=timm", f"model.backbone={MODEL}"]
    args += [f"model.weights={source}", f"model.img_size={IMG}", f"data.batch_size={BATCH}", "strategy=finetune"]
    args += [f"trainer.max_epochs={epochs}", "strategy.backbone_lr_mult=1.0", "optim.lr=1e-3", "optim.min_steps=0"]
    args += ["optim.weight_decay=0.05", f"data.num_workers={WORKERS}", "seed=1", "trainer.accelerator=gpu"]
    return [*args, "trainer.precision=bf16-mixed", "model.channels_last=true", "test=false", f"hydra.run.dir={out}"]


def raw_images_per_second(steps: int = 60, warmup: int = 10) -> float:
    """benchmarks.bench_throughput's minimal loop, moved to the GPU: tensors in GPU memory, no loading."""
    import timm
    import torch.nn.functional as F

    net = timm.create_model(MODEL, num_classes=10).cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05, fused=True)
    x = torch.randn(BATCH, 3, IMG, IMG, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,), device="cuda")
    for i in range(steps):
        if i == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return BATCH * (steps - warmup) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=64)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU here; nothing to measure")
        return
    import timm
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        data, source = Path(tmp) / "data", Path(tmp) / "source.safetensors"
        write_images(data, args.per_class)
        save_file(timm.create_model(MODEL).state_dict(), str(source))
        rows, rates = [], {}
        raw = raw_images_per_second()
        rows.append(["raw PyTorch loop (tensors on the GPU)", "-", f"{raw:.0f}"])
        rates["raw"] = raw
        if PEER.is_file():
            result, times = timed_run(timm_cmd(data, source, Path(tmp) / "timm", args.epochs), "timm train.py")
            found = [float(r) for r in re.findall(TIMM_EPOCH_RATE, result.stdout + result.stderr)]
            rates["timm"] = sum(found) / len(found) if found else float("nan")
            rows.append(["timm train.py", f"{times['wall']:.1f}", f"{rates['timm']:.0f}"])
        _, times = timed_run(tlcli_cmd(data, source, Path(tmp) / "tlcli", args.epochs), "tlcli train")
        rates["tlcli"] = json.loads((Path(tmp) / "tlcli" / "summary.json").read_text())["train_images_per_second"]
        rows.append(["tlcli train", f"{times['wall']:.1f}", f"{rates['tlcli']:.0f}"])
    print(f"# {MODEL} {IMG} px bf16, batch {BATCH}, {args.epochs} epochs ({machine()})\n")
    print(table(["tool", "wall s", "train images/s"], rows))
    print(f"\ntlcli / raw loop: {rates['tlcli'] / rates['raw']:.2f}x images/s")
    if "timm" in rates:
        print(f"tlcli / timm train.py: {rates['tlcli'] / rates['timm']:.2f}x images/s")


if __name__ == "__main__":
    main()
