"""Sweeps that scale: Hydra's launcher plugins run tlcli's jobs in other processes (joblib workers, submitit
jobs), and the Optuna sweeper searches hyper-parameters on the value `train` returns (`optimized_metric`)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml
from hydra.core.utils import JobStatus

from tests.conftest import assert_one_line_error, summary_of


def _job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def _sane(metrics: dict) -> None:
    assert set(metrics) >= {"val/acc", "val/loss", "test/acc", "test/loss"}, metrics
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("val/acc", "test/acc")), metrics
    assert metrics["val/loss"] > 0 and metrics["test/loss"] > 0, metrics


def test_joblib_launcher_runs_one_run_dir_per_job(tlcli, tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    result = tlcli(
        "train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "experiment=smoke", "model=embedded",
        "strategy=freeze,finetune", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout
    runs = _job_dirs(sweep)
    assert [p.name for p in runs] == ["0", "1"]
    summaries = [summary_of(p) for p in runs]
    assert [s["strategy"] for s in summaries] == ["freeze", "finetune"]
    for summary in summaries:
        _sane(summary["metrics"])
    assert summaries[0]["metrics"]["test/acc"] > 0.5  # the frozen Fashion-MNIST features separate the prototypes
    # the sweep folder is named by the launching process, although the jobs ran in joblib's workers
    assert result.stdout.strip().splitlines()[-1] == f"report: tlcli report {sweep}"


@pytest.mark.slow  # several jobs in their own processes (joblib's test runs by default)
def test_submitit_local_jobs_return_the_optimized_metric_and_errors_come_back(tlcli, tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    result = tlcli(
        "train", "-m", "hydra/launcher=submitit_local", "experiment=smoke", "model=embedded", "strategy=extend_freeze",
        "optim.lr=0.01,-1", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    # job 1 fails inside its submitit process: its one-line error is printed by the launching tlcli
    assert_one_line_error(result, "optim.lr=-1.0 must be positive")
    ok = sweep / "0"
    metrics = summary_of(ok)["metrics"]
    _sane(metrics)
    assert not (sweep / "1" / "summary.json").exists()
    # submitit's own record of job 0: it succeeded and returned val/acc (the default optimized_metric)
    results = sorted((sweep / ".submitit").glob("*/*_result.pkl"))
    assert len(results) == 2, results
    returned = {}
    for path in results:
        status, job_return = pickle.loads(path.read_bytes())
        assert status == "success", job_return  # submitit's view: the job ran; Hydra's JobReturn says how it ended
        returned[next(o for o in job_return.overrides if o.startswith("optim.lr="))] = job_return
    assert returned["optim.lr=0.01"].status == JobStatus.COMPLETED
    assert returned["optim.lr=0.01"].return_value == metrics["val/acc"]
    assert returned["optim.lr=-1"].status == JobStatus.FAILED


@pytest.mark.slow  # several jobs in their own processes (joblib's test runs by default)
def test_optuna_search_maximises_val_acc_over_its_trials(tlcli, tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    result = tlcli(  # no -m: the preset sets hydra.mode=MULTIRUN
        "train", "hparams_search=optuna", "experiment=smoke", "model=embedded", "strategy=extend_freeze",
        "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = _job_dirs(sweep)
    assert [p.name for p in runs] == ["0", "1", "2"]
    val_acc = [summary_of(p)["metrics"]["val/acc"] for p in runs]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(val_acc)
    # the best parameters are those the best trial ran with, sampled from the preset's search space
    trial_overrides = [yaml.safe_load((p / ".hydra" / "overrides.yaml").read_text()) for p in runs]
    lrs = [float(next(o for o in ov if o.startswith("optim.lr=")).split("=", 1)[1]) for ov in trial_overrides]
    assert len(set(lrs)) == 3 and all(1e-4 <= lr <= 1e-1 for lr in lrs)
    winners = [i for i, acc in enumerate(val_acc) if acc == max(val_acc)]
    assert best["best_params"]["optim.lr"] in [lrs[i] for i in winners]
    assert str(best["best_params"]["strategy.extension.hidden_dims"]) in {"[64]", "[256]", "[512]", "[256, 128]"}
    assert result.stdout.strip().splitlines()[-1] == f"report: tlcli report {sweep}"


def test_unknown_optimized_metric_names_the_available_ones(tlcli) -> None:
    result = tlcli("train", "experiment=smoke", "strategy=freeze", "optimized_metric=val/f1")
    assert_one_line_error(result, "optimized_metric 'val/f1'", "val/acc", "test/acc")
