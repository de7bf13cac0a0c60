"""Second stage of the transfer study: more seeds, at each strategy's LR chosen on the first seed's val acc.

The study searches the LR on one seed (5 LRs x 5 strategies per cell), then reruns only the chosen LR with
further seeds, so each cell reports mean ± std over 3 seeds at a fraction of 5 x 3 runs. The choice does not
move when the new seeds land: `choose_lr` ranks LRs on the seeds every LR ran (tl_cli/reporting/sweep.py).

    python -m study.more_seeds outputs/study/in1k_fashion_efficientnet_lite0 1,2

Each chosen job is rerun as `tlcli train -m <its overrides> seed=1,2`, so the new jobs land in the same sweep
folder, named by their overrides like the first stage's. Seeds already there are skipped: rerunning resumes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tl_cli.errors import TlcliError
from tl_cli.reporting.study import Cell, build_cells
from tl_cli.reporting.sweep import group_jobs, load_jobs

USAGE = "python -m study.more_seeds <study sweep folder> <seeds, e.g. 1,2>"


def commands(sweep: Path, seeds: list[int]) -> list[list[str]]:
    """One `tlcli train -m` argument list per (cell, strategy): its chosen LR's overrides with the missing seeds."""
    jobs = load_jobs(sweep)
    runs = []
    for cell in build_cells(group_jobs(jobs), jobs):
        runs += [args for args in _cell_commands(cell, seeds) if args]
    return runs


def _cell_commands(cell: Cell, seeds: list[int]) -> list[list[str]]:
    runs = []
    for choice in cell.choices.values():
        missing = [s for s in seeds if s not in choice.group.seeds()]
        first = choice.group.jobs[0]
        if not missing or not first.overrides:
            continue
        kept = [o for o in first.overrides if not o.startswith("seed=")]
        runs.append(["train", "-m", *kept, f"seed={','.join(map(str, missing))}"])
    return runs


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise TlcliError(f"usage: {USAGE}")
    sweep, seeds = Path(argv[0]), [int(s) for s in argv[1].split(",")]
    if not sweep.is_dir():
        raise TlcliError(f"no sweep folder {sweep}; run the study's first stage first (tlcli train -m experiment=...)")
    tlcli = str(Path(sys.executable).with_name("tlcli"))
    todo = commands(sweep, seeds)
    print(f"more_seeds: {len(todo)} chosen (cell, strategy) runs to extend with seeds {seeds}", flush=True)
    for args in todo:
        print("tlcli " + " ".join(args), flush=True)
        subprocess.run([tlcli, *args], check=True)
    return 0


if __name__ == "__main__":
    from study import run_module

    run_module(main, (subprocess.CalledProcessError,))
