"""Startup: `tlcli --help`, `tlcli train --cfg job` (neither imports torch) and the embedded default's
time to its first training step; `python -c pass` is the baseline. Then tlcli's import of a command's modules
(Python's collector paused, then frozen) against a plain import, and the other end: from a run's last line
(`run_dir: ...`) to the process's exit, against a plain Python process that imported the same modules.

    python -m benchmarks.bench_startup
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, median, table

TLCLI = str(Path(sys.executable).with_name("tlcli"))


def timed(cmd: list[str], env: dict | None = None, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, env={**os.environ, **(env or {})})
        times.append(time.perf_counter() - start)
    return median(times)


def seconds_from_last_line_to_exit(cmd: list[str], env: dict | None = None, repeats: int = 3) -> float:
    """Median time from the process's last line on stdout to its exit: the interpreter's teardown."""
    times = []
    for _ in range(repeats):
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as proc:
            last = time.perf_counter()
            for _line in proc.stdout:
                last = time.perf_counter()
            if proc.wait():
                raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
        times.append(time.perf_counter() - last)
    return median(times)


def exit_rows() -> list[list[str]]:
    """tlcli train's teardown, against `python -c "import <train's modules>"` (no gc.freeze) in the same run."""
    plain = [sys.executable, "-c", "import tl_cli.commands.train; print('imported', flush=True)"]
    base = seconds_from_last_line_to_exit(plain)
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TLCLI_OUTPUT_DIR": tmp}
        mine = seconds_from_last_line_to_exit([TLCLI, "train", "trainer.max_epochs=1"], env)
    return [
        ["python importing tlcli train's modules, GC as is: last line -> exit (baseline)", f"{base:.2f}", "1.0"],
        ["tlcli train (embedded default, 1 epoch): last line -> exit", f"{mine:.2f}", f"{mine / base:.2f}"],
    ]


def import_seconds(code: str, repeats: int = 5) -> float:
    """Median time of `code` (an import) timed inside a fresh process, interpreter start and exit left out."""
    timer = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t, flush=True)"
    times = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", timer + "; import os; os._exit(0)"], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{code} failed: {out.stderr[-500:]}")
        times.append(float(out.stdout))
    return median(times)


def import_rows() -> list[list[str]]:
    """tlcli's command import (collector paused, then frozen) against a plain import of the same module."""
    base = import_seconds("import tl_cli.commands.train")
    mine = import_seconds("from tl_cli.cli import _import_command; _import_command('train')")
    return [
        ["import tl_cli.commands.train, collector on (baseline)", f"{base:.2f}", "1.0"],
        ["tlcli's _import_command('train'): collector paused, then gc.freeze", f"{mine:.2f}", f"{mine / base:.2f}"],
    ]


def main() -> None:
    base = timed([sys.executable, "-c", "pass"])
    rows = [["python -c pass (baseline)", f"{base:.2f}", "1.0"]]
    for label, cmd in (
        ("tlcli --help", [TLCLI, "--help"]),
        ("tlcli train --cfg job", [TLCLI, "train", "--cfg", "job"]),
    ):
        t = timed(cmd)
        rows.append([label, f"{t:.2f}", f"{t / base:.1f}"])
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [TLCLI, "train", "trainer.max_epochs=1"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TLCLI_OUTPUT_DIR": tmp},
        )
        run_dir = Path(out.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))
        first = json.loads((run_dir / "summary.json").read_text())["seconds_to_first_step"]
    rows.append(
        ["tlcli train (embedded default): process start -> first training step", f"{first:.2f}", f"{first / base:.1f}"]
    )
    print(f"\nstartup: {machine()}")
    print(table(["command", "seconds (median of 5)", "x baseline"], rows))
    print("\nimport: torch, timm and Lightning, timed in the process")
    print(table(["import", "seconds (median of 5)", "x baseline"], import_rows()))
    print("\nexit: the interpreter's teardown")
    print(table(["command", "seconds (median of 3)", "x baseline"], exit_rows()))


if __name__ == "__main__":
    main()
