"""Are the study's frozen heads trained to convergence? Each against a converged logistic-regression probe.

For every frozen-strategy choice of a study sweep (freeze, extend_freeze at their val-chosen LR), the probe is
fit on the very features those runs trained on (same splits, subset and seed; from the sweep's feature cache):
standardised features, multinomial logistic regression by lbfgs to convergence, C chosen on **val** accuracy from
C_GRID. Its test accuracy is set beside the strategy's: within about 1 point says the head trained long enough.

    python -m study.probe_check outputs/study/in1k_fashion_efficientnet_lite0

Writes probe_check.csv into the sweep folder and prints it.
"""

from __future__ import annotations

import csv
import statistics
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from tl_cli.errors import TlcliError
from tl_cli.reporting.study import build_cells
from tl_cli.reporting.sweep import SweepJob, group_jobs, load_jobs, short

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
FROZEN = ("freeze", "extend_freeze")
COLUMNS = ["dataset", "samples_per_class", "seed", "strategy", "lr", "strategy_test_acc", "probe_c", "probe_val_acc"]
COLUMNS += ["probe_test_acc", "gap_points"]


def job_features(job: SweepJob) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(features, labels) per split, as the job's training run saw them (from the feature cache when warm)."""
    import torch
    from omegaconf import OmegaConf

    from tl_cli.config.paths import register_resolvers
    from tl_cli.data.features import cached_feature_splits
    from tl_cli.run.training import build_job, feature_cache_extra
    from tl_cli.rundir import CONFIG

    register_resolvers()
    cfg = OmegaConf.load(job.path / CONFIG)
    built = build_job(cfg)
    splits = cached_feature_splits(
        built.net,
        built.datamodule,
        torch.device("cpu"),
        nullcontext,
        cfg.data.feature_cache_dir,
        feature_cache_extra(cfg),
    )
    out = {}
    for name, ds in splits.items():
        x, y = ds[np.arange(len(ds))] if hasattr(ds, "features") else ds.tensors
        out[name] = (np.asarray(x, dtype=np.float32), np.asarray(y))
    return out


def converged_probe(features: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, float]:
    """(C, val acc, test acc) of the logistic regression whose C scores best on val (ties: the smaller C)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    (xtr, ytr), (xva, yva), (xte, yte) = features["train"], features["val"], features["test"]
    best = None
    for c in C_GRID:
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=10_000, tol=1e-6))
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("error", ConvergenceWarning)  # "converged" is the point: fail loudly if not
            probe.fit(xtr, ytr)
        val = float(np.mean(probe.predict(xva) == yva))
        if best is None or val > best[1]:
            best = (c, val, float(np.mean(probe.predict(xte) == yte)))
    return best


def check(sweep: Path) -> list[dict]:
    """One row per seed of every frozen strategy's chosen LR."""
    jobs = load_jobs(sweep)
    rows = []
    for cell in build_cells(group_jobs(jobs), jobs):
        for strategy in FROZEN:
            choice = cell.choices.get(strategy)
            for job in choice.group.jobs if choice else []:
                mine = job.metric("test/acc")
                if mine is None:  # a test=false run
                    continue
                c, val, test = converged_probe(job_features(job))
                values = [cell.dataset, short(cell.samples_per_class), job.summary["seed"], strategy, choice.lr, mine]
                values += [c, val, test, round(100 * (test - mine), 2)]
                rows.append(dict(zip(COLUMNS, values, strict=True)))
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        raise TlcliError("usage: python -m study.probe_check <study sweep folder>")
    rows = check(Path(argv[0]))
    with open(Path(argv[0]) / "probe_check.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(", ".join(f"{k}={v}" for k, v in row.items()))
    gaps = [r["gap_points"] for r in rows if r["strategy"] == "freeze"]
    if gaps:
        print(
            f"freeze vs probe: mean gap {statistics.fmean(gaps):+.2f} points (probe minus freeze), max {max(gaps):+.2f}"
        )
    return 0


if __name__ == "__main__":
    from study import run_module

    run_module(main)
