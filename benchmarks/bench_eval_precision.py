"""Eval throughput at fp32 vs bf16 autocast (+ channels_last): what `tlcli eval/predict precision=` changes.

One network (TransferNet over resnet18, random weights, 10 classes), random images in memory, run through
tlcli's own inference step (tl_cli/run/trained.py Inference) at each setting after one warm-up batch; settings
alternate within each round so they see the same machine state. Speed is images / median pass time; the ratio
is against fp32 in the same run. On a CPU without native bf16, autocast emulates it and is slower (about 2 min
on 2 busy cores, most of it the bf16 rows); --rounds 3 for steadier figures. Also the numeric cost: max abs
softmax difference and top-1 agreement with fp32.

    python -m benchmarks.bench_eval_precision [--quick] [--rounds N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from benchmarks.common import machine, median, table
from tl_cli import hardware
from tl_cli.data.transforms import BatchNormalize
from tl_cli.run.trained import Inference
from tl_cli.transfer.network import TransferNet

SETTINGS = [("32-true", False), ("bf16-mixed", False), ("bf16-mixed", True)]


@torch.inference_mode()
def one_pass(inference: Inference, net: torch.nn.Module, images: torch.Tensor, batch: int) -> torch.Tensor:
    """Softmax of every image, batch by batch, as eval runs them."""
    return torch.cat([inference.logits(net, x).softmax(1).cpu() for x in images.split(batch)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--img", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    num_images, batch = (64, 32) if args.quick else (128, 32)
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (num_images, 3, args.img, args.img), dtype=torch.uint8)  # as the DataLoader's
    seconds: dict[tuple[str, bool], list[float]] = {s: [] for s in SETTINGS}
    probs: dict[tuple[str, bool], torch.Tensor] = {}
    nets = {}
    for precision, channels_last in SETTINGS:
        torch.manual_seed(0)  # the same random weights at every setting
        inference = Inference(device, precision, channels_last, "benchmark", BatchNormalize((0.5,) * 3, (0.25,) * 3))
        net = inference.prepare(TransferNet(timm.create_model(args.backbone, num_classes=0), num_classes=10))
        one_pass(inference, net, images[:batch], batch)  # warm-up: kernel selection, allocator
        nets[(precision, channels_last)] = inference, net
    for _ in range(args.rounds):
        for setting, (inference, net) in nets.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            probs[setting] = one_pass(inference, net, images, batch)  # .cpu() in it waits for the GPU
            seconds[setting].append(time.perf_counter() - start)
    base_speed = num_images / median(seconds[SETTINGS[0]])
    reference = probs[SETTINGS[0]]
    rows = []
    for setting in SETTINGS:
        speed_ = num_images / median(seconds[setting])
        diff = (probs[setting] - reference).abs().max().item()
        agree = (probs[setting].argmax(1) == reference.argmax(1)).float().mean().item()
        name = setting[0] + (" + channels_last" if setting[1] else "")
        rows.append([name, f"{speed_:.0f}", f"{speed_ / base_speed:.2f}x", f"{diff:.4f}", f"{agree:.1%}"])
    native = (
        torch.cuda.is_bf16_supported() if device.type == "cuda" else hardware.cpu_has_native_bf16()
    )  # what trainer.precision=auto (and eval's precision=auto) decides by
    print(
        f"\neval precision, {args.backbone} @ {args.img}px, batch {batch}, {num_images} images on {device}: {machine()}"
    )
    print(f"native bf16 on this {device.type}: {'yes' if native else 'no'} (precision=auto picks bf16-mixed only then)")
    headers = ["setting", "eval img/s", "vs fp32", "max abs softmax diff", "top-1 agreement"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
