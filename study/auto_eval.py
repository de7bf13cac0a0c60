"""Score `strategy=auto` on study/auto_cells.py's untouched cells: collect the runs, then the verdict table.

    python -m study.auto_eval collect outputs/auto_study docs/study/auto_v3/runs.csv   # run dirs -> one CSV
    python -m study.auto_eval table docs/study/auto_v3/runs.csv [--write docs/study/auto_v3/untouched.md]
    python -m study.auto_eval doc docs/study/auto_v3/runs.csv docs/strategies-and-auto.md   # its generated block

runs.csv holds one row per evaluation job (python -m study.auto_runs untouched|issue): its cell, seed, job, test
and val acc, process wall seconds and, for auto, its pick. The table is computed from runs.csv alone, with the
verdict rule fixed in study/auto_cells.py before the runs: per cell, the best fixed strategy by mean test acc;
auto's paired difference to it per seed (points), its mean and 95 % t-interval; within noise when the mean is
>= -WITHIN_POINTS or the interval covers 0; the cost ratio auto / finetune per seed (wall seconds of the two
processes, run back to back).
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

from study.auto_cells import FIXED, ISSUE, UNTOUCHED, UNTOUCHED_V31, WITHIN_POINTS
from study.auto_runs import WALL
from study.study_doc import splice
from tl_cli.errors import TlcliError
from tl_cli.rundir import RunDir

USAGE = (
    "python -m study.auto_eval collect <auto_runs output folder> <runs.csv> | "
    "table <runs.csv> [--write <markdown file>] | doc <runs.csv> <page.md>"
)
GROUPS = {  # group -> its section title
    "untouched": "Cells fixed before any tuning (no setting was chosen on them)",
    "untouched_v31": "New cells, fixed before race v3.1 ran",
    "issue": "The cells issue 32 measured race v2 on",
}
BEGIN, END = "<!-- auto_eval: untouched -->", "<!-- auto_eval: end untouched -->"
COLUMNS = ("group", "cell", "seed", "job", "test_acc", "val_acc", "wall_seconds", "train_seconds", "pick")
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # Student t, two-sided 95 %, by degrees of freedom


def collect(folder: Path, out: Path) -> int:
    """One row per finished evaluation job under folder/{untouched,issue}/<cell>/seed<k>/<job>/."""
    rows = []
    for group in GROUPS:
        for job in sorted((folder / group).glob("*/seed*/*")):
            summary = RunDir(job).read_summary()
            if summary is None or not (job / WALL).is_file():
                continue
            pick = (summary.get("strategy_auto") or {}).get("chosen", "")
            rows.append({
                "group": group, "cell": job.parent.parent.name, "seed": int(job.parent.name[4:]), "job": job.name,
                "test_acc": summary["metrics"]["test/acc"], "val_acc": summary["metrics"]["val/acc"],
                "wall_seconds": float((job / WALL).read_text()), "train_seconds": summary["train_seconds"],
                "pick": pick,
            })  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


@dataclass
class CellResult:
    """auto against the fixed strategies on one cell, over the seeds every job finished."""

    group: str
    cell: str
    seeds: list[int]
    means: dict[str, float]  # job -> mean test acc (points)
    best: str  # the best fixed strategy by mean test acc
    diffs: list[float]  # auto - best per seed (points)
    vs_finetune: list[float]  # auto - finetune per seed (points)
    ratios: list[float]  # auto wall / finetune wall per seed
    picks: list[str]

    @property
    def mean_diff(self) -> float:
        return statistics.fmean(self.diffs)

    def interval(self) -> tuple[float, float]:
        n = len(self.diffs)
        if n < 2:
            return (self.mean_diff, self.mean_diff)
        half = T_975[n - 1] * statistics.stdev(self.diffs) / n**0.5
        return (self.mean_diff - half, self.mean_diff + half)

    @property
    def within_points(self) -> bool:
        """The stricter reading, the issue's: a mean paired difference of at least -WITHIN_POINTS."""
        return self.mean_diff >= -WITHIN_POINTS

    @property
    def within_noise(self) -> bool:
        low, high = self.interval()
        return self.mean_diff >= -WITHIN_POINTS or low <= 0.0 <= high

    def regret(self, job: str) -> float:
        """Mean test points a job loses to the best fixed strategy on this cell."""
        return self.means[self.best] - self.means[job]


def read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cell_results(rows: list[dict]) -> list[CellResult]:
    jobs: dict[tuple[str, str], dict[int, dict[str, dict]]] = {}
    for row in rows:
        jobs.setdefault((row["group"], row["cell"]), {}).setdefault(int(row["seed"]), {})[row["job"]] = row
    results = []
    order = [*UNTOUCHED, *UNTOUCHED_V31, *ISSUE]
    for (group, cell), by_seed in sorted(jobs.items(), key=lambda kv: order.index(kv[0][1])):
        seeds = sorted(s for s, js in by_seed.items() if {*FIXED, "auto"} <= js.keys())
        if not seeds:
            continue
        acc = {job: [100 * float(by_seed[s][job]["test_acc"]) for s in seeds] for job in (*FIXED, "auto")}
        means = {job: statistics.fmean(v) for job, v in acc.items()}
        best = max(FIXED, key=lambda s: means[s])
        wall = {job: [float(by_seed[s][job]["wall_seconds"]) for s in seeds] for job in ("auto", "finetune")}
        results.append(CellResult(
            group, cell, seeds, means, best,
            diffs=[a - b for a, b in zip(acc["auto"], acc[best], strict=True)],
            vs_finetune=[a - b for a, b in zip(acc["auto"], acc["finetune"], strict=True)],
            ratios=[a / b for a, b in zip(wall["auto"], wall["finetune"], strict=True)],
            picks=[by_seed[s]["auto"]["pick"] for s in seeds],
        ))  # fmt: skip
    return results


def table(results: list[CellResult], group: str) -> list[str]:
    lines = [
        "| cell | seeds | best fixed (test acc) | auto picks | auto - best (points, 95 % CI) | within noise "
        f"| within {WITHIN_POINTS} points | auto - finetune | cost: auto / finetune (mean, max) |",
        "|---|---:|---|---|---|---|---|---:|---|",
    ]
    for r in (r for r in results if r.group == group):
        low, high = r.interval()
        lines.append(
            f"| {r.cell} | {len(r.seeds)} | {r.best} ({r.means[r.best]:.1f}) | {' '.join(r.picks)} "
            f"| {r.mean_diff:+.2f} [{low:+.2f}, {high:+.2f}] | {'yes' if r.within_noise else '**no**'} "
            f"| {'yes' if r.within_points else '**no**'} | {statistics.fmean(r.vs_finetune):+.2f} "
            f"| {statistics.fmean(r.ratios):.2f}x, {max(r.ratios):.2f}x |"
        )
    return lines


def scorecard(results: list[CellResult]) -> list[str]:
    """auto against always-<strategy> over the cells: mean and worst regret to each cell's best fixed strategy."""
    lines = [
        f"| how the strategy is chosen | cells within noise | cells within {WITHIN_POINTS} points of the best "
        "| mean regret (points) | worst regret |",
        "|---|---:|---:|---:|---:|",
    ]
    n = len(results)
    auto = [-r.mean_diff for r in results]
    noise, near = sum(r.within_noise for r in results), sum(r.within_points for r in results)
    lines.append(f"| auto | {noise}/{n} | {near}/{n} | {statistics.fmean(auto):.2f} | {max(auto):.2f} |")
    for s in FIXED:
        regrets = [r.regret(s) for r in results]
        near = sum(r <= WITHIN_POINTS for r in regrets)
        lines.append(f"| always {s} | - | {near}/{n} | {statistics.fmean(regrets):.2f} | {max(regrets):.2f} |")
    return lines


def report(rows: list[dict]) -> str:
    """A table per group of cells, a scorecard per group and over all untouched cells, the cost over every pair."""
    results = cell_results(rows)
    lines = []
    for group, title in GROUPS.items():
        members = [r for r in results if r.group == group]
        if members:
            lines += [f"### {title}", "", *table(results, group), "", *scorecard(members), ""]
    untouched = [r for r in results if r.group.startswith("untouched")]
    if len({r.group for r in untouched}) > 1:
        lines += [f"### All {len(untouched)} untouched cells", "", *scorecard(untouched), ""]
    ratios = [x for r in results for x in r.ratios]
    if ratios:
        lines.append(
            f"Cost over all {len(ratios)} paired runs: auto / finetune wall time mean {statistics.fmean(ratios):.2f}x, "
            f"max {max(ratios):.2f}x."
        )
    lines.append(
        f"Within noise (the rule fixed with the cells): mean paired difference >= -{WITHIN_POINTS} points or its "
        f"95 % t-interval covers 0; with 3 seeds the interval is wide, so the stricter column counts a mean within "
        f"{WITHIN_POINTS} points only. Regret: the best fixed strategy's mean test acc minus auto's (or X's), in "
        f"points."
    )
    return "\n".join(lines) + "\n"


def doc_block(page: str) -> str:
    """The text between the page's generated-block markers (what `doc` wrote there)."""
    return page.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "collect":
        print(f"{collect(Path(argv[1]), Path(argv[2]))} rows -> {argv[2]}")
        return 0
    if argv[:1] == ["table"] and (len(argv) == 2 or (len(argv) == 4 and argv[2] == "--write")):
        text = report(read(Path(argv[1])))
        print(text, end="")
        if len(argv) == 4:
            Path(argv[3]).write_text(text)
        return 0
    if len(argv) == 3 and argv[0] == "doc":
        page = Path(argv[2])
        block = "\n".join([BEGIN, report(read(Path(argv[1]))).rstrip(), END])
        page.write_text(splice(page.read_text(), BEGIN, END, block, page))  # no markers: one line, nothing written
        return 0
    raise TlcliError(f"usage: {USAGE}")


if __name__ == "__main__":
    from study import run_module

    run_module(main)
