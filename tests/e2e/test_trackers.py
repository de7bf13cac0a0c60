"""logger=mlflow and logger=wandb: real tiny training runs write local tracker files (an MLflow file store, a W&B
offline run) beside the run dir's metrics.csv, with no server and no network."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import SMOKE, run_dir_of

# slow: mlflow and wandb loggers (make test-all and CI run them)
pytestmark = pytest.mark.slow


TRACKED = [*SMOKE, "strategy=freeze", "model=embedded"]
# Any HTTP(S) request would go to a closed local port and fail: the runs must not need one.
NO_NETWORK = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}


def _csv_epochs(run_dir: Path) -> set[str]:
    with open(run_dir / "metrics.csv") as f:
        return {row["epoch"] for row in csv.DictReader(f) if row.get("val/acc")}


def test_mlflow_logger_writes_a_local_run_with_the_metrics(tlcli, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    run_dir = run_dir_of(tlcli("train", *TRACKED, "logger=mlflow", env=NO_NETWORK))
    assert _csv_epochs(run_dir) == {"0", "1"}, "metrics.csv is still written beside the tracker"

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as configs/logger/mlflow.yaml sets it for the run
    client = MlflowClient(tracking_uri=f"file:{run_dir / 'mlruns'}")
    experiment = client.get_experiment_by_name("tlcli")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "train"
    assert 0 <= run.data.metrics["test/acc"] <= 1 and 0 <= run.data.metrics["val/acc"] <= 1
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] != []
    assert run.data.params["config/strategy/name"] == "freeze"  # the module's hyperparameters: the whole config


def test_wandb_logger_writes_an_offline_run(tlcli) -> None:
    pytest.importorskip("wandb")
    # no WANDB_MODE: offline comes from configs/logger/wandb.yaml; no API key either
    env = {**NO_NETWORK, "WANDB_API_KEY": "", "WANDB_MODE": ""}
    result = tlcli("train", *TRACKED, "logger=wandb", env=env)
    run_dir = run_dir_of(result)  # also: `run_dir:` stays the last stdout line (wandb's end-of-run lines are off)
    assert _csv_epochs(run_dir) == {"0", "1"}
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (records,) = offline.glob("run-*.wandb")  # W&B's binary run log, what `wandb sync` uploads
    data = records.read_bytes()
    assert b"val/acc" in data and b"test/acc" in data
    assert not list((run_dir / "wandb").glob("run-*")), "no online run"
