"""Fast defaults, by a documented rule backed by benchmarks/bench_precision.py.

`trainer.precision=auto`: bf16-mixed where the hardware has native bf16 (CUDA GPUs with bf16, CPUs with
AVX512-BF16 or AMX), 16-mixed on older GPUs, else 32-true. `model.channels_last=auto`: on whenever
the precision is a 16-bit one (NHWC feeds the bf16 convolution kernels directly).
Measured on a 2-core AVX512-BF16 CPU (README, Performance): bf16 + channels_last trains 1.5-1.7x faster
than fp32 for test_resnet at 32 px and resnet18 at 64 and 224 px.

The environment variable TLCLI_PRECISION (e.g. `TLCLI_PRECISION=32-true`) replaces what `auto` would pick,
wherever `auto` is resolved (training, strategy=auto's probe); explicit precisions are kept. It makes runs
comparable across machines whose bf16 numerics differ (AMX vs AVX512-BF16 vs none): `pytest --precision 32-true`
sets it for the test suite.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from tl_cli.errors import TlcliError

PRECISION_ENV = "TLCLI_PRECISION"  # replaces what trainer.precision=auto picks (e.g. 32-true)


@functools.cache
def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def uses_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def auto_precision(accelerator: str) -> tuple[str, str]:
    """(precision, reason) for trainer.precision=auto."""
    if uses_gpu(accelerator):
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed", "GPU supports bf16"
        return "16-mixed", "GPU without bf16"
    if cpu_has_native_bf16():
        return "bf16-mixed", "CPU has native bf16 (AVX512-BF16/AMX)"
    return "32-true", "CPU without native bf16"


def resolve_workers(
    setting: object, accelerator: str = "auto", devices: int = 1, name: str = "data.num_workers"
) -> int:
    """`data.num_workers`: an integer as given; `auto` sizes DataLoader workers for the machine.

    Training on the CPU: 0. The model's forward and backward already use every core, so worker processes
    compete with it (measured on 2 cores: test_resnet at 224 px from a JPEG folder ran at 111 img/s with
    0 workers, 99-105 with 1 or 2; in-memory Fashion-MNIST extraction was no faster with workers).
    On GPUs: the cores this process may use, split between devices, one kept for the main process, at most 8.
    """
    text = str(setting).strip().lower()
    if text != "auto":
        try:
            workers = int(text)
        except ValueError:
            workers = -1
        if workers < 0:
            raise TlcliError(f"{name}={setting} is not valid; use auto or an integer >= 0")
        return workers
    if not uses_gpu(accelerator):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // max(1, devices) - 1))


def is_16bit(precision: object) -> bool:
    """bf16-mixed, bf16-true, 16-mixed, 16-true: the precisions that run in a 16-bit float dtype."""
    return str(precision).startswith(("bf16", "16"))


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The torch.autocast dtype that runs a forward pass at `precision`; None for fp32 (no autocast)."""
    if str(precision).startswith("bf16"):
        return torch.bfloat16
    return torch.float16 if str(precision).startswith("16") else None


def resolve(precision: object, channels_last: object, accelerator: str) -> tuple[str, bool, str]:
    """Turn `auto` settings into concrete ones; returns (precision, channels_last, reason)."""
    reason = "set in config"
    override = os.environ.get(PRECISION_ENV, "").strip()
    if str(precision) == "auto" and override not in ("", "auto"):
        precision, reason = override, f"trainer.precision=auto replaced by {PRECISION_ENV}={override}"
    elif str(precision) == "auto":
        precision, reason = auto_precision(accelerator)
    if str(channels_last).lower() == "auto":
        channels_last = is_16bit(precision)
    else:
        channels_last = str(channels_last).lower() in ("true", "1", "yes")
    return str(precision), bool(channels_last), reason


def _compile_probe(x: torch.Tensor) -> torch.Tensor:
    return x * 2 + 1


@functools.cache
def compile_backend_error(device_type: str) -> str | None:
    """Why torch.compile's default backend (inductor) cannot build code for this device type here, or None.
    Tried on a tiny function: inductor needs a working C++ compiler on CPUs and Triton on GPUs, and dynamo a
    supported Python; none has a cheaper check that covers all three."""
    try:
        torch.compile(_compile_probe)(torch.ones(8, device=device_type))
    except Exception as ex:  # InductorError (no C++ compiler), BackendCompilerFailed (no Triton), RuntimeError
        first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        return first[:300]
    return None


def check_compile(device_type: str) -> None:
    """model.compile=true: a one-line error where torch.compile cannot build for the training device."""
    error = compile_backend_error(device_type)
    if error is not None:
        raise TlcliError(
            f"model.compile=true: torch.compile cannot build code for {device_type} here ({error}); "
            f"set model.compile=false"
        )


def fused_optimizer_kwargs(name: str, device: torch.device) -> dict[str, bool]:
    """{"fused": True} when timm's optimizer `name` is a torch optimizer with a fused kernel (Adam, AdamW, SGD) and
    the weights are on a CPU or a CUDA GPU: one kernel over every tensor instead of a Python loop per tensor (on
    CPU torch otherwise takes that loop): AdamW's step on resnet18 is 5-19x faster on 2 CPU threads
    (python -m benchmarks.bench_optimizer). Nothing for timm's own optimizers (lamb, lion, ...) or other devices."""
    import inspect

    from timm.optim import get_optimizer_class

    try:
        cls = get_optimizer_class(name, bind_defaults=False)
    except (ValueError, KeyError):  # an unknown name: create_optimizer_v2 reports it
        return {}
    fused = "fused" in inspect.signature(cls.__init__).parameters and cls.__module__.startswith("torch.")
    return {"fused": True} if fused and device.type in ("cpu", "cuda") else {}


def devices_requested(devices: Any, accelerator: str = "auto") -> int:
    """How many devices `trainer.devices` asks for on this machine: a number, a list of device ids, or -1/"auto"
    (every visible GPU where the accelerator can be one, as Lightning counts them; else one)."""
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, list | tuple) or type(devices).__name__ == "ListConfig":
        return max(1, len(devices))
    if str(accelerator) in ("auto", "gpu", "cuda"):
        return max(1, torch.cuda.device_count())
    return 1


def processes_sharing_cores(devices: Any) -> int:
    """Training processes on this machine that split its cores for DataLoader workers."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        return 1  # one task per GPU: each task's CPU affinity already holds only its own cores
    return devices_requested(devices)
