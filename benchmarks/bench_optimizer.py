"""One optimizer step, torch's per-tensor loop against its fused kernel (tlcli's `optim.fused=true`, the default).

On CPU torch takes the per-tensor loop unless asked: `foreach` is for GPUs, `fused` must be requested. The
benchmark times `step()` on resnet18's 11.2 M parameters with random gradients, alternating the variants so
drift in machine load hits each, and prints the medians and the ratio; it also prints how far one fused step's
weights land from the loop's (float rounding only).

    python -m benchmarks.bench_optimizer [--model resnet18] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from benchmarks.common import machine, median, table

VARIANTS = {"loop (torch's CPU default)": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def step_seconds(params: list[torch.Tensor], name: str, kwargs: dict, steps: int) -> float:
    cls = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    extra = {"momentum": 0.9} if name == "sgd" else {}
    optimizer = cls(params, lr=1e-3, weight_decay=0.05, **extra, **kwargs)
    for _ in range(3):  # state allocation and first-call costs
        optimizer.step()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def max_difference(model: torch.nn.Module, name: str) -> float:
    """Largest |w_fused - w_loop| after one step from the same weights and gradients."""
    after = []
    for kwargs in (VARIANTS["fused"], VARIANTS["loop (torch's CPU default)"]):
        params = [p.detach().clone().requires_grad_() for p in model.parameters()]
        for p, q in zip(params, model.parameters(), strict=True):
            p.grad = q.grad.clone()
        cls = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
        cls(params, lr=1e-3, weight_decay=0.05, **({"momentum": 0.9} if name == "sgd" else {}), **kwargs).step()
        after.append(params)
    return max((a - b).abs().max().item() for a, b in zip(*after, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-2
    n = sum(p.numel() for p in model.parameters())
    print(f"# optimizer step on {args.model} ({n / 1e6:.1f} M parameters), CPU; {machine()}")
    rows = []
    for name in ("adamw", "sgd"):
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(3):
            for variant, kwargs in VARIANTS.items():
                times[variant].append(step_seconds(list(model.parameters()), name, kwargs, args.steps))
        loop = median(times["loop (torch's CPU default)"])
        for variant in VARIANTS:
            ms = median(times[variant])
            rows.append([name, variant, f"{1000 * ms:.1f} ms", f"{loop / ms:.2f}x"])
        print(f"{name}: fused vs loop, largest weight difference after one step {max_difference(model, name):.1e}")
    print(table(["optimizer", "implementation", "step", "speed vs loop"], rows))


if __name__ == "__main__":
    main()
