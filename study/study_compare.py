"""A rerun of the study against the committed evidence: does it hold up?

`make study` reruns a budgeted part of the study (a subset of the committed cells) into its own folder. This
prints, for every (cell, strategy) the rerun has, both runs' val-chosen LR and test acc (mean ± std over seeds),
the difference in points, and whether the two agree within the seeds' noise (|difference| <= the sum of the two
stds); then one summary line. On the machine that produced the evidence, at the same code, the runs are
bit-identical; on another CPU they differ within noise.

    python -m study.study_compare outputs/study_budget/docs docs/study
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from tl_cli.errors import TlcliError

USAGE = "python -m study.study_compare <rerun's study folders> <committed study folders, e.g. docs/study>"


@dataclass(frozen=True)
class Match:
    """One (sweep, samples/class, strategy) row present in both the rerun and the committed evidence."""

    sweep: str
    new: dict[str, str]
    old: dict[str, str]

    @property
    def delta(self) -> float:
        """Rerun minus committed test acc, in points."""
        return 100 * (float(self.new["test_acc"]) - float(self.old["test_acc"]))

    @property
    def within_noise(self) -> bool:
        return abs(self.delta) <= 100 * (float(self.new["test_std"]) + float(self.old["test_std"])) + 1e-9

    @property
    def same_lr(self) -> bool:
        return float(self.new["lr"]) == float(self.old["lr"])


def _rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as f:
        return {(r["samples_per_class"], r["strategy"]): r for r in csv.DictReader(f)}


def matches(rerun: Path, committed: Path) -> tuple[list[Match], list[str]]:
    """Rows of every rerun sweep matched to the committed ones, and the rerun sweeps with no committed evidence."""
    found, unmatched = [], []
    for study in sorted(rerun.glob("*/study.csv")):
        sweep = study.parent.name
        old_path = committed / sweep / "study.csv"
        if not old_path.is_file():
            unmatched.append(sweep)
            continue
        old = _rows(old_path)
        found += [Match(sweep, row, old[key]) for key, row in _rows(study).items() if key in old]
    return found, unmatched


def _acc(row: dict[str, str]) -> str:
    return f"{float(row['test_acc']):.3f} ± {float(row['test_std']):.3f} (lr {float(row['lr']):g})"


def table(found: list[Match]) -> list[str]:
    lines = [
        "| sweep | samples/class | strategy | committed | rerun | Δ points | within noise |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for m in found:
        noise = "yes" if m.within_noise else "**no**"
        lines.append(
            f"| {m.sweep} | {m.new['samples_per_class']} | {m.new['strategy']} | {_acc(m.old)} | {_acc(m.new)} "
            f"| {m.delta:+.1f} | {noise} |"
        )
    return lines


def summary(found: list[Match]) -> str:
    n = len(found)
    noisy = sum(m.within_noise for m in found)
    same_lr = sum(m.same_lr for m in found)
    worst = max((abs(m.delta) for m in found), default=0.0)
    return (
        f"study_compare: {n} (cell, strategy) rows in both; same val-chosen LR {same_lr}/{n}; "
        f"test acc within the seeds' noise {noisy}/{n}; largest |Δ| {worst:.1f} points"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise TlcliError(f"usage: {USAGE}")
    rerun, committed = map(Path, argv)
    for folder in (rerun, committed):
        if not folder.is_dir():
            raise TlcliError(f"no study folder {folder}; usage: {USAGE}")
    found, unmatched = matches(rerun, committed)
    print("\n".join(table(found)))
    for sweep in unmatched:
        print(f"study_compare: {sweep}: no committed study.csv under {committed} to compare with")
    print(summary(found))
    return 0


if __name__ == "__main__":
    from study import run_module

    run_module(main)
