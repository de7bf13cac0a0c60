"""The sweep model shared by `tlcli report` (report.py) and its study view (study.py).

A sweep is the folder of a `tlcli train -m`; each job folder is a run directory (tl_cli/rundir.py).
Finished jobs that differ only by seed form a `Group`, keyed by a `GroupKey` (strategy, backbone, weights,
dataset, samples_per_class, lr). The statistics over seeds and the two decision rules live here, once:

- **Tie with best** (`tied_with_best`): a group ties with the best one when the difference of their means is
  within one pooled sample std over seeds; with one run in each group only an equal mean ties.
- **LR choice** (`choose_lr`): among the groups of one strategy in one cell (same data, backbone, source and
  samples per class), the learning rate is the one with the highest mean **val** accuracy over the seeds that
  every LR ran (never test); an exact tie goes to the smaller LR, the conservative choice that keeps more of the
  source's features. The study searches the LR on seed 0 and then adds seeds at the chosen LR only
  (study/more_seeds.py): those added seeds do not change the choice.
  Means are `statistics.fmean` (an exactly rounded sum), so a tie does not depend on the order of the jobs.
  Exact ties happen: accuracies on small val splits take few values, and bf16 numerics differ between CPUs,
  so a rule that broke ties by position would pick different LRs on different machines.

Import-light: no torch, no matplotlib.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tl_cli.rundir import CONFIG, OVERRIDES, RunDir
from tl_cli.transfer.strategies import STRATEGIES

Stat = tuple[float | None, float, int]  # (mean, sample std (0 for one run), number of runs) over seeds


class GroupKey(NamedTuple):
    """What a group's jobs share: every setting but the seed (summary.json's keys)."""

    strategy: str
    backbone: str
    weights: str
    dataset: str | None
    samples_per_class: int | None
    lr: float | None


GROUP_KEYS = GroupKey._fields
# label prefix of each key when it varies across the sweep (the strategy always starts the label)
LABEL_PREFIX = {"backbone": "", "weights": "weights=", "dataset": "", "samples_per_class": "spc=", "lr": "lr="}


@dataclass
class SweepJob:
    """One job folder of the sweep."""

    name: str
    path: Path
    summary: dict[str, Any] | None
    overrides: list[str]
    config: dict[str, Any]
    val_curve: dict[int, float] = field(default_factory=dict)  # epoch -> val/acc

    @property
    def status(self) -> str:
        return "ok" if self.summary is not None else "unfinished"

    def key(self) -> GroupKey | None:
        return GroupKey(*(self.summary.get(k) for k in GROUP_KEYS)) if self.summary else None

    def metric(self, name: str) -> float | None:
        value = (self.summary or {}).get("metrics", {}).get(name)
        return float(value) if value is not None else None


@dataclass
class Group:
    """Finished jobs that differ only by seed."""

    key: GroupKey
    jobs: list[SweepJob]
    label: str = ""
    tie: bool = False

    def stat(self, name: str) -> Stat:
        """(mean, sample std (0 for one run), number of runs) of a metric over seeds."""
        values = [v for v in (j.metric(name) for j in self.jobs) if v is not None]
        mean = statistics.fmean(values) if values else None
        return mean, statistics.stdev(values) if len(values) > 1 else 0.0, len(values)

    def seeds(self) -> set[Any]:
        return {j.summary.get("seed") for j in self.jobs if j.summary}

    def val_over(self, seeds: set[Any]) -> float | None:
        """Mean val acc over the jobs of these seeds."""
        values = [v for j in self.jobs if j.summary.get("seed") in seeds and (v := j.metric("val/acc")) is not None]
        return statistics.fmean(values) if values else None

    def mean_of(self, key: str) -> float | None:
        values = [float(j.summary[key]) for j in self.jobs if j.summary and j.summary.get(key) is not None]
        return statistics.fmean(values) if values else None

    def curve(self) -> tuple[list[int], list[float]]:
        """Epochs and val/acc averaged over the seeds that reached each epoch."""
        epochs = sorted({e for j in self.jobs for e in j.val_curve})
        means = [statistics.fmean(j.val_curve[e] for j in self.jobs if e in j.val_curve) for e in epochs]
        return epochs, means


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None


def _absolute_weights(summary: dict[str, Any] | None, path: Path) -> dict[str, Any] | None:
    """summary.json with a relative weights path made absolute, so jobs started from different directories with
    the same source file group together: relative to the job's working directory (Hydra's runtime.cwd), else to
    the report's (a job skipped by a later launch from elsewhere has that launch's runtime.cwd)."""
    weights = (summary or {}).get("weights")
    if summary is None or not isinstance(weights, str) or Path(weights).is_absolute():
        return summary
    hydra = _read_yaml(path / ".hydra" / "hydra.yaml") or {}
    cwd = (((hydra.get("hydra") or {}).get("runtime")) or {}).get("cwd")
    for base in [Path(cwd)] if cwd else []:
        if (base / weights).is_file():
            return {**summary, "weights": str(base / weights)}
    return {**summary, "weights": str(Path(weights).resolve())} if Path(weights).is_file() else summary


def load_job(path: Path) -> SweepJob:
    """A job folder; its summary is None when the job did not finish (missing or half-written summary.json)."""
    run = RunDir(path)
    overrides, config = _read_yaml(run / OVERRIDES), _read_yaml(run / CONFIG)
    return SweepJob(
        name=path.name,
        path=path,
        summary=_absolute_weights(run.read_summary(), path),
        overrides=[str(o) for o in overrides] if isinstance(overrides, list) else [],
        config=config if isinstance(config, dict) else {},
        val_curve=run.val_curve(),
    )


def load_jobs(sweep: Path) -> list[SweepJob]:
    """Job folders (run directories: holding .hydra/config.yaml or summary.json) of a sweep, in job-number order."""
    folders = [p for p in sweep.iterdir() if RunDir(p).is_run()]
    folders.sort(key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))
    return [load_job(p) for p in folders]


def group_jobs(jobs: list[SweepJob]) -> list[Group]:
    """Finished jobs grouped by GroupKey, sorted by mean test acc (best first), ties with the best marked."""
    by_key: dict[GroupKey, list[SweepJob]] = {}
    for job in jobs:
        key = job.key()
        if key is not None:
            by_key.setdefault(key, []).append(job)
    groups = [Group(key, members) for key, members in by_key.items()]
    varying = [f for f in GROUP_KEYS[1:] if len({getattr(g.key, f) for g in groups}) > 1]
    for g in groups:
        g.label = " ".join([str(g.key.strategy), *(f"{LABEL_PREFIX[f]}{short(getattr(g.key, f))}" for f in varying)])
    groups.sort(key=lambda g: -(g.stat("test/acc")[0] if g.stat("test/acc")[0] is not None else -math.inf))
    for g in groups[1:]:
        g.tie = tied_with_best(groups[0].stat("test/acc"), g.stat("test/acc"))
    return groups


def tied_with_best(best: Stat, other: Stat) -> bool:
    """Whether `other` (mean, std, n over seeds) is within one pooled std of `best`: a difference within noise."""
    (best_mean, best_std, n_best), (mean, std, n) = best, other
    return best_mean is not None and mean is not None and best_mean - mean <= _pooled(best_std, n_best, std, n)


def _pooled(s1: float, n1: int, s2: float, n2: int) -> float:
    """Pooled sample std of two groups; 0 when neither has two runs."""
    dof = (n1 - 1) + (n2 - 1)
    return math.sqrt(((n1 - 1) * s1**2 + (n2 - 1) * s2**2) / dof) if dof > 0 else 0.0


def choose_lr(candidates: list[Group]) -> Group:
    """The LR choice rule: the group with the highest mean val acc over the seeds all candidates ran; an exact
    tie goes to the smaller LR.

    `candidates` are one strategy's groups in one cell (they differ only by LR). A group without val acc
    ranks last; a group without an LR (optim.lr not recorded) after every LR.
    """
    common = set.intersection(*(g.seeds() for g in candidates))

    def rank(g: Group) -> tuple[float, float]:
        val, lr = g.val_over(common) if common else g.stat("val/acc")[0], g.key.lr
        return (-val if val is not None else math.inf, lr if lr is not None else math.inf)

    return min(candidates, key=rank)


def strategy_order(present: set[str]) -> list[str]:
    """Strategies in tl_cli/transfer/strategies.py's order, then any others (e.g. from newer runs) by name."""
    return [s for s in STRATEGIES if s in present] + sorted(present - set(STRATEGIES))


def short(value: Any) -> str:
    """A key's value in a label: a path as its file stem, samples_per_class=null as "all"."""
    if value is None:  # samples_per_class=null: the whole train split
        return "all"
    text = str(value)
    return Path(text).stem if "/" in text else text
