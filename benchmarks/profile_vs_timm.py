"""Where the end-to-end time goes: tlcli train against timm's train.py on bench_vs_timm's recipe, each under py-spy.

Both tools run once, one after the other, under `py-spy record --format raw` (sampled stacks, 50 Hz); every sample
is put in the first phase whose pattern its stack matches, so the phases add up to the run's wall time. Idle
helper threads (tqdm's monitor) are left out. A benchmark, not a test: its figures are seconds of samples on this
machine, and the difference column says where tlcli spends more than timm's script.

    python -m benchmarks.profile_vs_timm [--recipe resnet18]

Exits 0 with a message when ../shared/peers/timm_train.py or py-spy is absent.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_vs_timm import PEER, RECIPES, timm_args, tlcli_args, write_folder, write_source
from benchmarks.common import machine, table

RATE = 50  # samples per second
# (phase, stack pattern), first match wins: the order puts the narrow phases before the loops that contain them
PHASES = [
    ("idle helper thread", r"TMonitor\.run"),
    ("imports", r"_find_and_load"),
    # per image in the DataLoader, then per batch: timm's PrefetchLoader, tlcli's on_after_batch_transfer
    ("image decode + transforms", r"__getitem__|PrefetchLoader\.__iter__|on_after_batch_transfer"),
    ("checkpoint writes", r"save_checkpoint|_save_checkpoint"),
    ("val / test / sanity passes", r"_evaluation_loop|validation_step|test_step|_run_sanity_check|validate \("),
    ("optimizer update", r"_fused_adam|_single_tensor_adam|_multi_tensor_adam|zero_grad"),
    ("backward", r"run_backward"),
    ("forward (train)", r"forward"),
]


def phases(raw: Path) -> collections.Counter:
    """Seconds of samples per phase in a py-spy raw (collapsed stacks) file."""
    seconds: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        phase = next((name for name, pattern in PHASES if re.search(pattern, stack)), "other")
        seconds[phase] += int(count) / RATE
    return seconds


def profiled(args: list[str], raw: Path) -> collections.Counter:
    spy = [shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))]
    command = [*spy, "record", "--rate", str(RATE), "--format", "raw", "-o", str(raw), "--", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{args[1]} failed under py-spy:\n{result.stderr[-2000:]}")
    return phases(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="resnet18", choices=list(RECIPES))
    recipe = RECIPES[parser.parse_args().recipe]
    spy = shutil.which("py-spy") or Path(sys.executable).with_name("py-spy")
    if not PEER.is_file() or not Path(spy).is_file():
        print(f"profile_vs_timm: skipped, needs {PEER} and py-spy (pip install py-spy)")
        return
    print(f"# where the time goes, tlcli vs timm train.py, {recipe.model} (fp32); {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root / "data", {"train": 200, "val": 50})
        write_source(root / "source.safetensors", recipe)
        data, source = root / "data", root / "source.safetensors"
        timm = profiled(timm_args(recipe, data, source, root / "t", False), root / "t.raw")
        mine = profiled(tlcli_args(recipe, data, source, root / "l", False), root / "l.raw")
    names = [name for name, _ in PHASES[1:]] + ["other"]
    rows = [[n, f"{timm[n]:.1f}", f"{mine[n]:.1f}", f"{mine[n] - timm[n]:+.1f}"] for n in names]
    total = [sum(c[n] for n in names) for c in (timm, mine)]
    rows.append(["total (wall, sampled)", f"{total[0]:.1f}", f"{total[1]:.1f}", f"{total[1] - total[0]:+.1f}"])
    print(table(["phase", "timm train.py s", "tlcli train s", "tlcli − timm s"], rows))
    print(f"tlcli / timm end to end: {total[0] / total[1]:.2f}x (> 1: tlcli faster)")


if __name__ == "__main__":
    main()
