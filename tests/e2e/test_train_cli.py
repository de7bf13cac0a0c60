"""Real `tlcli` subprocess runs on tiny configs: every strategy, a sweep, the run-dir contract."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import SMOKE, run_dir_of, summary_of

STRATEGIES = ["freeze", "finetune", "extend_freeze", "extend_finetune", "scratch"]


def assert_run_dir_contract(run_dir: Path, strategy: str) -> dict:
    for name in (
        ".hydra/config.yaml",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
        "model.safetensors",
        "labels.json",
        "summary.json",
        "metrics.csv",
    ):
        assert (run_dir / name).is_file(), name
    summary = summary_of(run_dir)
    assert summary["strategy"] == strategy and summary["backbone"] == "test_resnet"
    p = summary["params"]
    assert p["total"] == p["trainable"] + p["frozen"] > 0
    assert (p["frozen"] > 0) == (strategy in ("freeze", "extend_freeze"))
    metrics = summary["metrics"]
    assert 0 <= metrics["val/acc"] <= 1 and 0 <= metrics["test/acc"] <= 1, metrics
    assert math.isfinite(metrics["test/loss"]) and metrics["test/loss"] >= 0, metrics
    assert summary["epochs"] == 2 and summary["train_seconds"] > 0 and summary["train_images_per_second"] > 0
    labels = json.loads((run_dir / "labels.json").read_text())
    assert len(labels) == summary["num_classes"]
    keys = load_file(run_dir / "model.safetensors").keys()
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == ({"backbone", "head", "extension"} if strategy.startswith("extend") else {"backbone", "head"})
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {row["epoch"] for row in rows if row.get("val/acc")} == {"0", "1"}
    return summary


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_end_to_end(tlcli, strategy: str) -> None:
    # the embedded Fashion-MNIST source model, transferred to synthetic data for 2 epochs
    result = tlcli("train", *SMOKE, "model=embedded", f"strategy={strategy}")
    run_dir = run_dir_of(result)
    assert "test/acc:" in result.stdout
    summary = assert_run_dir_contract(run_dir, strategy)
    with open(run_dir / "metrics.csv") as f:
        train_acc = [float(row["train/acc"]) for row in csv.DictReader(f) if row.get("train/acc")]
    assert max(train_acc) > 0.5  # it learned (chance is 0.25)
    if strategy in ("freeze", "extend_freeze"):  # frozen BN: eval statistics are the source's from step one
        assert summary["metrics"]["test/acc"] > 0.5


def test_test_false_skips_the_test_pass_and_its_features(tlcli, tmp_path: Path) -> None:
    """test=false (lightning-hydra-template's flag): no test pass, val metrics only; a frozen run's disk feature
    cache never extracts the test split."""
    cache = tmp_path / "cache"
    result = tlcli(
        "train", *SMOKE, "strategy=freeze", "data.augment=false", f"data.feature_cache_dir={cache}", "test=false"
    )
    run_dir = run_dir_of(result)
    lines = result.stdout.strip().splitlines()
    assert lines[-2].startswith("val/acc: ") and lines[-2].endswith("(not tested: test=false)"), lines[-2:]
    metrics = summary_of(run_dir)["metrics"]
    assert "val/acc" in metrics and not any(k.startswith("test/") for k in metrics), metrics
    assert (run_dir / "model.safetensors").is_file()
    assert sorted(p.name for p in cache.glob("*/*.y.npy")) == ["train.y.npy", "val.y.npy"]


def test_test_false_still_saves_the_best_epochs_weights(tlcli) -> None:
    """model.safetensors holds the selected (best-val) epoch's weights whether or not it is tested. At this LR
    the network falls to chance after its first epoch, so the best epoch is not the last (checked here)."""
    overrides = ["strategy=finetune", "strategy.backbone_lr_mult=1.0", "optim.lr=1.0", "trainer.max_epochs=4"]
    run_dir = run_dir_of(tlcli("train", *SMOKE, *overrides, "test=false"))
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    saved = load_file(run_dir / "model.safetensors")
    assert all(torch.equal(tensor, best["state_dict"][f"net.{name}"]) for name, tensor in saved.items())
    if best["epoch"] != last["epoch"]:  # else this run cannot tell best from last
        assert not all(torch.equal(tensor, last["state_dict"][f"net.{name}"]) for name, tensor in saved.items())


@pytest.mark.parametrize(
    ("env", "overrides", "expected"),
    [
        ("32-true", [], "32-true"),
        ("bf16-mixed", [], "bf16-mixed"),
        ("bf16-mixed", ["trainer.precision=32-true"], "32-true"),  # explicit: kept
    ],
)
def test_precision_env_replaces_only_auto(tlcli, env: str, overrides: list[str], expected: str) -> None:
    """TLCLI_PRECISION (pytest --precision) replaces what trainer.precision=auto picks, whatever the CPU;
    channels_last=auto follows it; an explicit trainer.precision is kept."""
    result = tlcli("train", *SMOKE, "trainer.max_epochs=1", *overrides, env={"TLCLI_PRECISION": env})
    summary = summary_of(run_dir_of(result))
    assert summary["precision"] == expected and summary["channels_last"] == (expected == "bf16-mixed")


def test_multirun_sweep_of_the_four_strategies(tlcli, tmp_path: Path) -> None:
    result = tlcli(
        "train",
        "-m",
        *SMOKE,
        "strategy=freeze,finetune,extend_freeze,extend_finetune",
        "hydra.sweep.dir=" + str(tmp_path / "sweep"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = sorted(p for p in (tmp_path / "sweep").iterdir() if (p / "summary.json").exists())
    assert [summary_of(d)["strategy"] for d in run_dirs] == ["freeze", "finetune", "extend_freeze", "extend_finetune"]
    assert result.stdout.count("run_dir: ") == 4


def test_embedded_default_source_model(tlcli) -> None:
    """The default job (embedded Fashion-MNIST source -> digits), shortened to one epoch."""
    result = tlcli("train", "trainer.max_epochs=1")
    run_dir = run_dir_of(result)
    summary = summary_of(run_dir)
    assert summary["strategy"] == "extend_finetune" and summary["dataset"] == "digits"
    assert summary["weights"].endswith("fashion_mnist_test_resnet.safetensors")
    assert summary["metrics"]["test/acc"] > 0.5


def test_chained_transfer_from_a_run_dir(tlcli) -> None:
    first = run_dir_of(tlcli("train", *SMOKE, "strategy=scratch"))
    second = run_dir_of(tlcli("train", *SMOKE, "strategy=freeze", f"model.weights={first}", "data.num_classes=3"))
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    backbone_keys = [k for k in a if k.startswith("backbone.")]
    assert backbone_keys and all(torch.equal(a[k], b[k]) for k in backbone_keys)  # source kept, frozen
    assert b["head.weight"].shape[0] == 3
    assert summary_of(second)["weights"] == str(first / "model.safetensors")
    # the Lightning checkpoint of a run is a valid source too
    third = run_dir_of(tlcli("train", *SMOKE, "strategy=freeze", f"model.weights={first}/checkpoints/last.ckpt"))
    assert summary_of(third)["weights"].endswith("last.ckpt")


def test_hub_weights_from_a_preseeded_cache(tlcli, tmp_path: Path) -> None:
    """model.weights=hub goes through timm's pretrained loading, served offline from the HF cache."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    source = timm.create_model("test_resnet")
    repo = tmp_path / "hf" / "models--timm--test_resnet.r160_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(source.state_dict(), repo / "snapshots" / commit / "model.safetensors")
    env = {"HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    run_dir = run_dir_of(tlcli("train", *SMOKE, "strategy=freeze", "model.weights=hub", env=env))
    assert summary_of(run_dir)["weights"] == "hub:test_resnet"
    trained = load_file(run_dir / "model.safetensors")
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(trained[f"backbone.{key}"], value), key


def test_tensorboard_logger(tlcli) -> None:
    run_dir = run_dir_of(tlcli("train", *SMOKE, "strategy=freeze", "logger=tensorboard", "trainer.max_epochs=1"))
    assert (run_dir / "metrics.csv").is_file()
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))


def test_model_file_metadata_names_the_backbone(tlcli) -> None:
    run_dir = run_dir_of(tlcli("train", *SMOKE, "strategy=finetune", "trainer.max_epochs=1"))
    with safe_open(str(run_dir / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["backbone"] == "test_resnet"


def test_fashion_mnist_end_to_end(tlcli) -> None:
    """The one built-in source no other default test trains on (Debian's dataset-fashion-mnist, `make test`
    installs it): two classes, 2 images each, the tiny model, one epoch."""
    args = ["data=fashion_mnist", "data.classes=[0,1]", "data.samples_per_class=2", "model=tiny", "model.in_chans=1"]
    run = run_dir_of(tlcli("train", *SMOKE, *args, "strategy=freeze", "trainer.max_epochs=1"))
    summary = summary_of(run)
    assert summary["dataset"] == "fashion_mnist" and summary["num_classes"] == 2
    assert summary["split_sizes"]["train"] == 4 and summary["split_sizes"]["test"] == 2000
