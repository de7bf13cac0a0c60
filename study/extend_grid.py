"""Widen the study's LR grid past every choice that sits at its edge.

A chosen LR at the top or bottom of the grid may be a truncated search: the best LR could lie beyond it. For each
(cell, strategy) whose val-chosen LR is the smallest or the largest it ran, this runs the next point of the
half-decade grid (..., 0.0003, 0.001, 0.003, ..., 0.1, 0.3, ...) past it, on the search seed only, in the same
sweep folder; it repeats until no choice sits at an edge or `--rounds` are spent. Run it between the study's first
stage and `more_seeds`, which then adds seeds at any choice that moved.

    python -m study.extend_grid outputs/study/digits_test_resnet [--rounds 2]
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

from tl_cli.errors import TlcliError
from tl_cli.reporting.study import Choice, build_cells
from tl_cli.reporting.sweep import group_jobs, load_jobs

USAGE = "python -m study.extend_grid <study sweep folder> [--rounds N]"


def next_lr(lr: float, up: bool) -> float:
    """The neighbour of `lr` on the 1-3 half-decade grid (0.1 -> 0.3 up, 0.001 -> 0.0003 down); x3 off the grid."""
    exponent = math.floor(math.log10(lr) + 1e-9)
    mantissa = round(lr / 10**exponent, 6)
    if mantissa not in (1.0, 3.0):
        return float(f"{lr * 3 if up else lr / 3:.3g}")
    if up:
        step = (3, exponent) if mantissa == 1.0 else (1, exponent + 1)
    else:
        step = (3, exponent - 1) if mantissa == 1.0 else (1, exponent)
    return float(f"{step[0]}e{step[1]}")


def _edge_run(choice: Choice) -> list[str] | None:
    """`tlcli train -m` arguments for the LR past the choice's edge, on its search seed; None when inside the grid."""
    if choice.lr is None or len(choice.lrs) < 2 or min(choice.lrs) < choice.lr < max(choice.lrs):
        return None
    search = min(choice.group.jobs, key=lambda j: (j.summary or {}).get("seed", 0))
    if not search.overrides:
        return None
    lr = next_lr(choice.lr, up=choice.lr == max(choice.lrs))
    kept = [o for o in search.overrides if not o.startswith("optim.lr=")]
    return ["train", "-m", *kept, f"optim.lr={lr:g}"]


def commands(sweep: Path) -> list[list[str]]:
    """One run per (cell, strategy) whose val-chosen LR is the smallest or the largest it ran."""
    jobs = load_jobs(sweep)
    runs = [_edge_run(choice) for cell in build_cells(group_jobs(jobs), jobs) for choice in cell.choices.values()]
    return [args for args in runs if args]


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 3) or (len(argv) == 3 and argv[1] != "--rounds"):
        raise TlcliError(f"usage: {USAGE}")
    sweep, rounds = Path(argv[0]), int(argv[2]) if len(argv) == 3 else 2
    if not sweep.is_dir():
        raise TlcliError(f"no sweep folder {sweep}; run the study's first stage first (tlcli train -m experiment=...)")
    tlcli = str(Path(sys.executable).with_name("tlcli"))
    for round_ in range(1, rounds + 1):
        todo = commands(sweep)
        print(f"extend_grid: round {round_}: {len(todo)} chosen LRs at an edge of the grid", flush=True)
        for args in todo:
            print("tlcli " + " ".join(args), flush=True)
            subprocess.run([tlcli, *args], check=True)
        if not todo:
            break
    return 0


if __name__ == "__main__":
    from study import run_module

    run_module(main, (subprocess.CalledProcessError,))
