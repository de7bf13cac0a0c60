"""Replay `strategy=auto`'s race on a finished study sweep, from its jobs' per-epoch val curves, without training.

For each cell the race is simulated on the search seed's runs at the auto LR: a frozen candidate scores its best
val acc over the whole run, a racing one its best over the first `race_epochs` epochs, the leader its best over the
whole run; the pick follows tl_cli/run/race.py's own `pick`. Each variant of the race's settings is then scored
like the real auto runs (best-or-tied picks, regret against the cell's best at each strategy's val-chosen LR).
It designs the race's settings on the study's curves; the settings are fixed before the evaluation runs, which are
real `strategy=auto` runs, never this replay.

    python -m study.race_replay outputs/study/digits_test_resnet outputs/study/in1k_digits_efficientnet_lite0
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

from tl_cli.config.schema import AutoConfig
from tl_cli.errors import TlcliError
from tl_cli.reporting.study import Cell, build_cells
from tl_cli.reporting.sweep import SweepJob, group_jobs, load_jobs

USAGE = "python -m study.race_replay <study sweep folder> [...]"
AUTO_LR = 0.03
SEARCH_SEED = 0


@dataclass(frozen=True)
class Variant:
    """The race's settings under test (the names of strategy.auto's keys); by default, its current settings."""

    race_fraction: float = AutoConfig.race_fraction
    tie_se: float = AutoConfig.tie_se
    prior: str = AutoConfig.prior
    scratch_min_per_class: int = AutoConfig.scratch_min_per_class
    scratch_lr_mult: float = AutoConfig.scratch_lr_mult  # scratch's LR relative to the auto LR

    def label(self) -> str:
        return (
            f"fraction {self.race_fraction:g}, tie_se {self.tie_se:g}, prior {self.prior}, "
            f"scratch from {self.scratch_min_per_class}/class at lr x{self.scratch_lr_mult:g}"
        )


def _runs_by_key(jobs: list[SweepJob]) -> dict[tuple, SweepJob]:
    """The search seed's finished jobs by (samples_per_class, strategy, lr)."""
    runs = {}
    for job in jobs:
        s = job.summary or {}
        if s.get("seed") == SEARCH_SEED and s.get("strategy") != "auto" and job.val_curve:
            runs[(s.get("samples_per_class"), s["strategy"], _grid(s.get("lr")))] = job
    return runs


def _grid(lr: float | None) -> float | None:
    return None if lr is None else float(f"{lr:.2g}")  # 0.03 x 0.333 -> 0.01, a grid point


def _best(curve: dict[int, float], epochs: int | None = None) -> float:
    return max(v for e, v in curve.items() if epochs is None or e < epochs)


def replay_cell(cell: Cell, runs: dict[tuple, SweepJob], variant: Variant) -> str | None:
    """The strategy the race would pick in this cell; None where a candidate's run at the auto LR is missing."""
    from tl_cli.run.race import FROZEN, pick, race_epochs, trainable_candidates

    def job(strategy: str) -> SweepJob | None:
        mult = variant.scratch_lr_mult if strategy == "scratch" else 1.0
        return runs.get((cell.samples_per_class, strategy, _grid(AUTO_LR * mult)))

    spc = cell.samples_per_class if cell.samples_per_class is not None else sys.maxsize
    racing = trainable_candidates(spc, variant.scratch_min_per_class)
    found = {name: job(name) for name in (*FROZEN, *racing)}
    if any(j is None for j in found.values()):
        return None
    val_images = int(found["finetune"].summary["split_sizes"]["val"])
    epochs = int((found["finetune"].config.get("trainer") or {}).get("max_epochs", 10))
    stop = race_epochs(variant.race_fraction, epochs)
    scores = {name: _best(found[name].val_curve, stop) for name in racing}
    leader, _ = pick(scores, val_images, variant.tie_se, variant.prior)
    final = {name: _best(found[name].val_curve) for name in (*FROZEN, leader)}
    return pick(final, val_images, variant.tie_se, variant.prior)[0]


def score(cells: list[tuple[Cell, dict]], variant: Variant) -> tuple[int, int, float, float]:
    """(best-or-tied picks, picks, mean regret, worst regret) of a variant over the cells it could replay."""
    picks = [(cell, replay_cell(cell, runs, variant)) for cell, runs in cells]
    picks = [(cell, p) for cell, p in picks if p is not None]
    regrets = [cell.regret(p) or 0.0 for cell, p in picks]
    hits = sum(p in cell.winners() for cell, p in picks)
    return hits, len(picks), sum(regrets) / max(len(regrets), 1), max(regrets, default=0.0)


def variants() -> list[Variant]:
    grid = itertools.product((0.2, 0.3, 0.5), (0.0, 0.5, 1.0), ("finetune", "extend_finetune"), (1, 50), (1.0, 0.333))
    return [Variant(f, t, p, s, m) for f, t, p, s, m in grid]


def main(argv: list[str]) -> int:
    if not argv:
        raise TlcliError(f"usage: {USAGE}")
    cells = []
    for folder in map(Path, argv):
        if not folder.is_dir():
            raise TlcliError(f"no sweep folder {folder}; run the study first (make study)")
        jobs = load_jobs(folder)
        runs = _runs_by_key(jobs)
        cells += [(cell, runs) for cell in build_cells(group_jobs(jobs), jobs)]
    rows = sorted(((score(cells, v), v) for v in variants()), key=lambda r: (-r[0][0], r[0][2]))
    print("| race settings | best or tied | mean regret | worst regret |\n|---|---:|---:|---:|")
    for (hits, n, mean, worst), v in rows:
        print(f"| {v.label()} | {hits}/{n} | {mean:.2f} | {worst:.1f} |")
    return 0


if __name__ == "__main__":
    from study import run_module

    run_module(main)
