"""Run the jobs of study/auto_cells.py's cells: `tlcli train` subprocesses, one folder per (cell, seed, job).

    python -m study.auto_runs tuning outputs/auto_study [--jobs 2]     # val curves to tune the race on (test=false)
    python -m study.auto_runs untouched outputs/auto_study             # the fixed strategies and auto
    python -m study.auto_runs issue outputs/auto_study [--part timed|untimed]

Tuning jobs: each fixed strategy as a user runs it, the frozen ones again without augmentation (the race's proxy:
cached features of un-augmented images), and scratch at 1, 1/3 and 1/10 of the default LR; all with `test=false`.
Evaluation jobs: the five fixed strategies and `strategy=auto`, with test; finetune and auto run back to back, one
job at a time, and each job's process wall time goes to wall_seconds.txt (auto's cost ratio). `--part untimed`
runs only the other four (they need no timing, and do not depend on auto's settings); `--part timed` only finetune
and auto. A job whose summary.json exists is skipped, so a rerun resumes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from study.auto_cells import FIXED, SEEDS, TUNING_SEEDS, cells
from tl_cli.errors import TlcliError
from tl_cli.run.race import FROZEN

USAGE = (
    "python -m study.auto_runs tuning|untouched|issue <output folder> [--jobs N] [--part timed|untimed] "
    "[--cells a,b,...]"
)
TIMED = ("finetune", "auto")
WALL = "wall_seconds.txt"
SCRATCH_LR_MULTS = (1.0, 0.333, 0.1)


def default_lr(overrides: tuple[str, ...]) -> float:
    """optim.lr of the composed config (the default recipe's LR for this cell's model)."""
    from hydra import compose, initialize_config_dir

    from tl_cli.config.paths import config_dir, register_resolvers
    from tl_cli.config.schema import register_schemas

    register_schemas()
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return float(compose("train", overrides=list(overrides)).optim.lr)


def tuning_jobs(cell: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The jobs one seed of a tuning cell runs, by name."""
    lr = default_lr(cell)
    jobs = {name: (f"strategy={name}",) for name in FIXED if name != "scratch"}
    jobs |= {f"{name}_proxy": (f"strategy={name}", "data.augment=false") for name in FROZEN}
    jobs |= {f"scratch_x{m:g}": ("strategy=scratch", f"optim.lr={lr * m:.6g}") for m in SCRATCH_LR_MULTS}
    return {name: (*cell, *args, "test=false") for name, args in jobs.items()}


def eval_jobs(cell: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """finetune and auto first (back to back: the cost ratio), then the other fixed strategies."""
    order = ("finetune", "auto", *(s for s in FIXED if s != "finetune"))
    return {name: (*cell, f"strategy={name}") for name in order}


def run_job(folder: Path, overrides: tuple[str, ...], seed: int, threads: int | None) -> None:
    """One `tlcli train` into `folder` unless it finished before; its wall time to wall_seconds.txt."""
    if (folder / "summary.json").is_file():
        return
    tlcli = str(Path(sys.executable).with_name("tlcli"))
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    folder.mkdir(parents=True, exist_ok=True)
    args = [tlcli, "train", *overrides, f"seed={seed}", f"hydra.run.dir={folder}"]
    started = time.perf_counter()
    with open(folder / "stdout.log", "w") as out:
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(f"FAILED ({done.returncode}): {folder}", flush=True)
        return
    (folder / WALL).write_text(f"{seconds:.3f}\n")
    print(f"{seconds:7.1f} s  {folder}", flush=True)


def main(argv: list[str]) -> int:
    options = dict(zip(argv[2::2], argv[3::2], strict=False))
    if len(argv) < 2 or len(argv) % 2 or not set(options) <= {"--jobs", "--part", "--cells"}:
        raise TlcliError(f"usage: {USAGE}")
    group, out, parallel, part = argv[0], Path(argv[1]), int(options.get("--jobs", 1)), options.get("--part")
    try:
        chosen = cells(group)
    except KeyError as e:
        raise TlcliError(str(e.args[0])) from None
    if "--cells" in options:  # these cells only, in this order
        chosen = {name: chosen[name] for name in options["--cells"].split(",")}
    todo = []
    for name, cell in chosen.items():
        jobs = tuning_jobs(cell) if group == "tuning" else eval_jobs(cell)
        if part is not None:
            jobs = {job: args for job, args in jobs.items() if (job in TIMED) == (part == "timed")}
        for seed in TUNING_SEEDS if group == "tuning" else SEEDS:
            todo += [(out / group / name / f"seed{seed}" / job, args, seed) for job, args in jobs.items()]
    threads = 1 if parallel > 1 or part == "untimed" else None  # one torch thread per parallel job
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda job: run_job(*job, threads), todo))
    return 0


if __name__ == "__main__":
    from study import run_module

    run_module(main, (subprocess.CalledProcessError,))
