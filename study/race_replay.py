"""Choose `strategy=auto`'s race settings by replaying the race on the tuning cells' **val** curves, no training.

    python -m study.race_replay outputs/auto_study/tuning --export docs/study/auto_v3/tuning.csv   # run dirs -> CSV
    python -m study.race_replay docs/study/auto_v3/tuning.csv [--write docs/study/auto_v3/replay.md]

Reads the jobs of `python -m study.auto_runs tuning` (run with test=false: there is no test accuracy to read),
from their run dirs or from the committed CSV of their val curves (one row per job and epoch).
For each (cell, seed) and each variant of the settings, the race of tl_cli/run/race.py is simulated:
- a frozen candidate scores its proxy run's val curve (un-augmented, the race's cached features), over its first
  race epochs (`frozen_at=race`) or all of them (`full`);
- a trainable one scores its best val acc over its first race epochs (scratch: the run at `scratch_lr_mult`);
- the pick follows race.py's own `pick`. Its outcome is the full run's best val acc of the strategy it picks, as
  the race would train it (a frozen pick with the run's augmentation; scratch at its multiplied LR).
A variant is scored by its mean val regret against the best fixed strategy at its defaults, and its modelled cost:
the race's train seconds over finetune's (the frozen proxies, the race slices, the pick's rest or its retraining).

The rule that chooses, fixed before the replay ran: the lowest mean val regret among the variants whose mean
modelled cost is <= MAX_COST; ties (within 0.05 points) go to the cheaper variant, then the earlier in the grid.
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from study.auto_cells import FIXED
from tl_cli.errors import TlcliError
from tl_cli.run.race import FROZEN, best_before, pick, race_epochs, trainable_candidates
from tl_cli.rundir import RunDir

USAGE = (
    "python -m study.race_replay <tuning folder, evaluation cell or csv> ... [--export <csv> | --write <markdown file>]"
)
COLUMNS = ("cell", "seed", "job", "epoch", "val_acc", "best_val_acc", "train_seconds", "epochs", "val_images",
           "train_min_per_class")  # fmt: skip
MAX_COST = 1.35  # modelled train seconds; the processes' start-up, the test and calibration come on top
GRID = {
    "race_fraction": (0.1, 0.2, 0.3),
    "confirm_fraction": (0.0, 0.2, 0.3, 0.4),
    "frozen_at": ("race", "full"),
    "tie_se": (0.0, 0.5, 1.0, 2.0),
    "prior": ("finetune", "extend_finetune"),
    # race v3 chose 1 among 1, 0.333 and 0.1 (docs/study/auto_v3/replay.md); race v3.1's added tuning cell,
    # taken from evaluation runs, has scratch at the default LR only
    "scratch_lr_mult": (1.0,),
}
EPSILON = 0.05  # points: variants closer than this in regret count as equal


@dataclass(frozen=True)
class Job:
    """One finished tuning job: its val curve (epoch -> acc), best val acc, train seconds and epochs."""

    curve: dict[int, float]
    val_acc: float
    seconds: float
    epochs: int


@dataclass(frozen=True)
class Seed:
    """The jobs of one (cell, seed), by job name (study/auto_runs.py's tuning_jobs), and its val size."""

    cell: str
    seed: int
    jobs: dict[str, Job]
    val_images: int
    train_min_per_class: int

    def truth(self, name: str, mult: float) -> float:
        """Full-run val acc of strategy `name` as the race trains it."""
        return self.jobs[_job_name(name, mult)].val_acc

    def best_fixed(self) -> float:
        return max(self.truth(s, 1.0) for s in FIXED)


def _job_name(strategy: str, mult: float) -> str:
    return f"scratch_x{mult:g}" if strategy == "scratch" else strategy


def _job(run: RunDir, summary: dict, scale: float = 1.0) -> Job:
    """A finished job's val curve, best val acc, epochs and train seconds (times `scale`)."""
    return Job(run.val_curve(), summary["metrics"]["val/acc"], summary["train_seconds"] * scale, summary["epochs"])


def _seed(cell: str, seed_dir: Path, jobs: dict[str, Job], summary: dict) -> Seed:
    """A (cell, seed) with its val size and smallest train class, read from one of its jobs' summary."""
    sizes = summary["split_sizes"]
    smallest = summary.get("samples_per_class") or sizes["train"] // summary["num_classes"]
    return Seed(cell, int(seed_dir.name[4:]), jobs, sizes["val"], smallest)


def load(folder: Path) -> list[Seed]:
    """Every (cell, seed) whose jobs all finished."""
    seeds = []
    for seed_dir in sorted(folder.glob("*/seed*")):
        runs = {p.name: RunDir(p) for p in sorted(seed_dir.iterdir()) if p.is_dir()}
        summaries = {name: s for name, run in runs.items() if (s := run.read_summary()) is not None}
        jobs = {name: _job(runs[name], s) for name, s in summaries.items()}
        needed = {*FIXED, "freeze_proxy", "extend_freeze_proxy"} - {"scratch"}
        if needed <= jobs.keys() and any(n.startswith("scratch_x") for n in jobs):
            seeds.append(_seed(seed_dir.parent.name, seed_dir, jobs, summaries["finetune"]))
    return seeds


EVAL_JOBS = {"scratch": "scratch_x1"}  # an evaluation cell's job names -> the tuning jobs' (scratch at the default LR)


def load_eval_cell(cell: Path) -> list[Seed]:
    """An evaluation cell (study/auto_runs.py untouched|issue) read as tuning seeds: its fixed runs, and the
    frozen proxies from its auto run's candidates (auto/auto/<name>/, their seconds from strategy_auto). Only val
    is read; such a cell is no longer untouched for settings chosen on it. Its finetune ran timed (alone, all
    cores), the other fixed strategies untimed (two at a time, one thread each): their seconds are scaled by
    finetune's over extend_finetune's, two networks of about the same cost."""
    seeds = []
    for seed_dir in sorted(cell.glob("seed*")):
        runs = {p.name: RunDir(p) for p in seed_dir.iterdir() if p.is_dir()}
        summaries = {name: run.read_summary() for name, run in runs.items()}
        if any(summaries.get(name) is None for name in (*FIXED, "auto")):
            continue
        scale = summaries["finetune"]["train_seconds"] / summaries["extend_finetune"]["train_seconds"]
        jobs = {
            EVAL_JOBS.get(name, name): _job(runs[name], summaries[name], 1.0 if name == "finetune" else scale)
            for name in FIXED
        }
        candidates = summaries["auto"]["strategy_auto"]["candidates"]
        for name in FROZEN:
            curve = RunDir(runs["auto"] / "auto" / name).val_curve()
            c = candidates[name]
            jobs[f"{name}_proxy"] = Job(curve, c["full_val_acc"], c["seconds"], c["epochs"])
        seeds.append(_seed(cell.name, seed_dir, jobs, summaries["finetune"]))
    return seeds


def export(seeds: list[Seed], path: Path) -> None:
    """The seeds' jobs as one CSV row per (job, epoch): everything the replay reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for s in seeds:
            for name, job in sorted(s.jobs.items()):
                for epoch, acc in sorted(job.curve.items()):
                    writer.writerow([s.cell, s.seed, name, epoch, acc, job.val_acc, job.seconds, job.epochs,
                                     s.val_images, s.train_min_per_class])  # fmt: skip


def load_csv(path: Path) -> list[Seed]:
    """The seeds an `export` wrote."""
    rows: dict[tuple[str, int], list[dict]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault((row["cell"], int(row["seed"])), []).append(row)
    seeds = []
    for (cell, seed), group in rows.items():
        jobs: dict[str, Job] = {}
        for row in group:
            job = jobs.setdefault(row["job"], Job({}, float(row["best_val_acc"]), float(row["train_seconds"]),
                                                  int(row["epochs"])))  # fmt: skip
            job.curve[int(row["epoch"])] = float(row["val_acc"])
        first = group[0]
        seeds.append(Seed(cell, seed, jobs, int(first["val_images"]), int(first["train_min_per_class"])))
    return seeds


def replay(seed: Seed, v: dict) -> tuple[str, float, float]:
    """(the pick, its val regret in points, its modelled cost in finetune runs) under settings v."""
    epochs = seed.jobs["finetune"].epochs
    first = race_epochs(v["race_fraction"], epochs)
    scores, cost = {}, 0.0
    for name in FROZEN:
        proxy = seed.jobs[f"{name}_proxy"]
        scores[name] = _frozen_score(seed, name, v, first)
        cost += proxy.seconds
    trainable = {}
    for name in trainable_candidates(seed.train_min_per_class, 1):
        job = seed.jobs[_job_name(name, v["scratch_lr_mult"])]
        trainable[name] = best_before(job.curve, first)
        cost += job.seconds * first / job.epochs
    chosen, _ = pick({**scores, **trainable}, seed.val_images, v["tie_se"], v["prior"])
    done = first  # epochs the pick has trained if it is trainable
    second = race_epochs(v["confirm_fraction"], epochs) if v["confirm_fraction"] else 0
    if chosen in FROZEN and second > first:  # race.py's _second_look
        challenger, _ = pick(trainable, seed.val_images, v["tie_se"], v["prior"])
        job = seed.jobs[_job_name(challenger, v["scratch_lr_mult"])]
        cost += job.seconds * (second - first) / job.epochs
        again = {n: _frozen_score(seed, n, v, second) for n in FROZEN} | {challenger: best_before(job.curve, second)}
        chosen, _ = pick(again, seed.val_images, v["tie_se"], v["prior"])
        done = second
    picked = seed.jobs[_job_name(chosen, v["scratch_lr_mult"])]
    cost += picked.seconds * ((1 - done / picked.epochs) if chosen not in FROZEN else 1.0)
    regret = 100 * (seed.best_fixed() - seed.truth(chosen, v["scratch_lr_mult"]))
    return chosen, regret, cost / seed.jobs["finetune"].seconds


def _frozen_score(seed: Seed, name: str, v: dict, epochs: int) -> float:
    """A frozen candidate's proxy score after `epochs` race epochs (frozen_at=race) or over all (full)."""
    return best_before(seed.jobs[f"{name}_proxy"].curve, None if v["frozen_at"] == "full" else epochs)


def variants() -> list[dict]:
    return [dict(zip(GRID, values, strict=True)) for values in itertools.product(*GRID.values())]


def score(seeds: list[Seed], v: dict) -> tuple[float, float, int]:
    """(mean val regret in points, mean modelled cost, picks within one val standard error of the best)."""
    regrets, costs, hits = [], [], 0
    for s in seeds:
        _, regret, cost = replay(s, v)
        regrets.append(regret)
        costs.append(cost)
        best = s.best_fixed()
        hits += regret <= 100 * math.sqrt(best * (1 - best) / s.val_images) + 1e-9
    return statistics.fmean(regrets), statistics.fmean(costs), hits


def choose(seeds: list[Seed]) -> tuple[dict, list[tuple[dict, tuple[float, float, int]]]]:
    """The rule in the module docstring: (chosen settings, every variant with its score)."""
    scored = [(v, score(seeds, v)) for v in variants()]
    affordable = [(v, s) for v, s in scored if s[1] <= MAX_COST]
    if not affordable:
        raise TlcliError(f"no variant costs <= {MAX_COST} finetune runs on these cells")
    best_regret = min(s[0] for _, s in affordable)
    near = [(v, s) for v, s in affordable if s[0] <= best_regret + EPSILON]
    return min(near, key=lambda vs: vs[1][1])[0], scored


def proxy_changes(seeds: list[Seed], v: dict) -> list[str]:
    """(cell, seed)s where scoring the frozen candidates on their real (augmented) runs picks differently."""
    changed = []
    for s in seeds:
        real = {**s.jobs, **{f"{n}_proxy": s.jobs[n] for n in FROZEN}}
        if replay(s, v)[0] != replay(Seed(s.cell, s.seed, real, s.val_images, s.train_min_per_class), v)[0]:
            changed.append(f"{s.cell} seed {s.seed}")
    return changed


def report(seeds: list[Seed]) -> str:
    chosen, scored = choose(seeds)
    lines = [
        f"Replay on {len(seeds)} (cell, seed)s of the tuning cells, val only; {len(scored)} variants.",
        f"Rule: lowest mean val regret with mean modelled cost <= {MAX_COST}; within {EPSILON} points, the cheaper.",
        "",
        "The 15 best affordable variants:",
        "",
        "| variant | mean val regret (points) | modelled cost (finetune runs) | picks within 1 val se |",
        "|---|---:|---:|---:|",
    ]
    ranked = sorted(scored, key=lambda vs: (vs[1][1] > MAX_COST, vs[1][0], vs[1][1]))  # the affordable first
    for v, (regret, cost, hits) in ranked[:15]:
        mark = " **(chosen)**" if v == chosen else ""
        lines.append(f"| {_label(v)}{mark} | {regret:.2f} | {cost:.2f} | {hits}/{len(seeds)} |")
    over = min((vs for vs in scored if vs[1][1] > MAX_COST), key=lambda vs: vs[1][0], default=None)
    if over is not None:
        v, (regret, cost, hits) = over
        lines += ["", f"Best over the cost bound: {_label(v)}: {regret:.2f} points at {cost:.2f} runs, "
                  f"{hits}/{len(seeds)} within 1 val se."]  # fmt: skip
    lines += ["", "Chosen: " + _label(chosen), "", "Per (cell, seed) under the chosen settings:", ""]
    lines += ["| cell | seed | pick | val regret (points) | modelled cost |", "|---|---:|---|---:|---:|"]
    for s in seeds:
        chosen_pick, regret, cost = replay(s, chosen)
        lines.append(f"| {s.cell} | {s.seed} | {chosen_pick} | {regret:.2f} | {cost:.2f} |")
    changed = proxy_changes(seeds, chosen)
    lines += ["", f"The un-augmented proxy changes the pick, against scoring the real frozen runs, on "
              f"{len(changed)} of {len(seeds)}: {', '.join(changed) or 'none'}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _label(v: dict) -> str:
    return ", ".join(f"{k}={val}" for k, val in v.items())


def _load_any(source: Path) -> list[Seed]:
    """A CSV from `export`, a tuning folder (<cell>/seed<k>/<job>), or an evaluation cell (seed<k>/<job>)."""
    if source.is_file():
        return load_csv(source)
    return load_eval_cell(source) if any(source.glob("seed*/auto")) else load(source)


def main(argv: list[str]) -> int:
    option, target = (argv[-2], Path(argv[-1])) if argv[-2:-1] in (["--write"], ["--export"]) else (None, None)
    sources = [Path(a) for a in (argv[:-2] if option else argv)]
    if not sources or any(str(a).startswith("--") for a in sources):
        raise TlcliError(f"usage: {USAGE}")
    seeds = [seed for source in sources for seed in _load_any(source)]
    if not seeds:
        raise TlcliError(f"no finished tuning cells under {argv[0]}; run python -m study.auto_runs tuning first")
    if option == "--export":
        export(seeds, target)
        print(f"{len(seeds)} (cell, seed)s -> {target}")
        return 0
    text = report(seeds)
    print(text, end="")
    if option == "--write":
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return 0


if __name__ == "__main__":
    from study import run_module

    run_module(main)
