"""Layer-wise LR decay, weight EMA and Mixup/CutMix (issue 15) through real `tlcli` runs: bad values are one-line
errors, the EMA weights are the ones validated, tested and saved, Mixup trains with the feature cache off, and
a resumed run with all three on equals an uninterrupted one."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.conftest import assert_one_line_error, run_dir_of, summary_of
from tests.e2e.test_reliability import KEEP_EPOCHS, RUN

SMOKE = ["experiment=smoke"]


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["optim.layer_decay=1.5"], ["optim.layer_decay=1.5", "(0, 1]"]),
        (["optim.layer_decay=0"], ["optim.layer_decay=0", "(0, 1]"]),
        (["strategy=freeze", "optim.layer_decay=0.75"], ["optim.layer_decay=0.75", "no effect with strategy=freeze"]),
        (["optim.ema_decay=1.2"], ["optim.ema_decay=1.2", "(0, 1)"]),
        (["data.mixup=-1"], ["data.mixup=-1", ">= 0"]),
        (["data.cutmix=-0.5"], ["data.cutmix=-0.5", ">= 0"]),
        (
            ["strategy=freeze", "data.cache_features=true", "data.mixup=0.8"],
            ["data.cache_features=true", "data.mixup=0"],
        ),
    ],
)
def test_bad_values_are_one_line_errors(tlcli, overrides: list[str], needles: list[str]) -> None:
    assert_one_line_error(tlcli("train", *SMOKE, *overrides), *needles)


def _eval_loss(tlcli, ckpt: Path, split: str, out: Path) -> float:
    result = tlcli("eval", f"ckpt={ckpt}", f"split={split}", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((out / "metrics.json").read_text())["metrics"]["loss"]


def test_ema_weights_are_validated_tested_and_saved_and_frozen_parts_stay_bit_identical(tlcli, tmp_path) -> None:
    # one epoch, so the selected (best-val) epoch is the last; fp32, so eval (fp32) reproduces the run's losses
    run = run_dir_of(
        tlcli(
            "train", *SMOKE, "strategy=extend_freeze", "optim.ema_decay=0.9", "trainer.max_epochs=1",
            "optim.min_steps=20", "trainer.precision=32-true",
        )
    )  # fmt: skip
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    ema = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()}
    raw = {k.removeprefix("net."): v for k, v in ckpt["current_model_state"].items()}
    saved = load_file(run / "model.safetensors")
    assert saved.keys() == ema.keys()
    assert all(torch.equal(saved[k], ema[k]) for k in saved)  # model.safetensors = the EMA weights
    trained = [k for k in saved if k.startswith(("head.", "extension.")) and saved[k].is_floating_point()]
    assert max((saved[k] - raw[k]).abs().max().item() for k in trained) > 1e-3  # ... which are not the raw ones
    frozen = [k for k in saved if k.startswith("backbone.")]
    assert frozen and all(torch.equal(saved[k], raw[k]) for k in frozen)  # EMA of constants: bit-identical

    # val and test metrics were computed with the EMA weights: eval of model.safetensors reproduces them,
    # eval of the raw weights does not
    metrics = summary_of(run)["metrics"]
    for split in ("val", "test"):
        assert _eval_loss(tlcli, run, split, tmp_path / f"ema_{split}") == pytest.approx(
            metrics[f"{split}/loss"], abs=1e-5
        )
    raw_run = tmp_path / "raw_run"
    shutil.copytree(run, raw_run)
    with safe_open(run / "model.safetensors", "pt") as f:
        metadata = f.metadata()
    save_file({k: raw[k].contiguous() for k in saved}, raw_run / "model.safetensors", metadata=metadata)
    assert abs(_eval_loss(tlcli, raw_run, "test", tmp_path / "raw_test") - metrics["test/loss"]) > 1e-3


def test_mixup_cutmix_trains_with_soft_targets_and_the_feature_cache_off(tlcli) -> None:
    # freeze + deterministic inputs would cache features; 3 x 33 train images in batches of 32: an odd last batch
    result = tlcli(
        "train", *SMOKE, "strategy=freeze", "data.mixup=0.8", "data.cutmix=1.0", "optim.label_smoothing=0.1",
        "data.num_classes=3", "data.samples_per_split=[33,8,8]",
    )  # fmt: skip
    run = run_dir_of(result)
    assert "feature cache off: data.mixup/data.cutmix mix the train images" in result.stdout + result.stderr
    assert summary_of(run)["feature_cache"] is False
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_resume_with_ema_mixup_and_layer_decay_equals_an_uninterrupted_run(tlcli, tmp_path: Path) -> None:
    options = ["optim.ema_decay=0.9", "optim.layer_decay=0.75", "data.mixup=0.8", "data.cutmix=1.0"]
    full = run_dir_of(tlcli("train", *RUN, *options, *KEEP_EPOCHS, f"hydra.run.dir={tmp_path / 'full'}"))
    killed = tmp_path / "killed"  # what a kill -9 right after epoch 1 leaves behind
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / ".hydra", killed / ".hydra")
    shutil.copy(full / "epochs" / "e1.ckpt", killed / "checkpoints" / "last.ckpt")
    assert run_dir_of(tlcli("train", f"resume={killed}")) == killed
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for state in ("state_dict", "current_model_state", "averaging_state"):  # EMA, raw weights, EMA count
        assert a[state].keys() == b[state].keys()
        for key, value in a[state].items():
            assert torch.equal(value, b[state][key]), (state, key)
    assert summary_of(full)["metrics"] == summary_of(killed)["metrics"]
