"""Layer-wise LR decay, weight EMA, Mixup/CutMix and LP-FT (issue 15) through real `tlcli` runs: bad values are
one-line errors, the EMA weights are the ones validated, tested and saved, Mixup trains with the feature cache off,
a resumed run with the first three on equals an uninterrupted one, and strategy.freeze_epochs keeps the backbone
bit-identical to the source while the new layers train alone, and resumes exactly in either phase."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.conftest import KEEP_EPOCHS, RESUMABLE, SMOKE, assert_one_line_error, run_dir_of, summary_of

# slow: EMA, LP-FT, layer decay, Mixup in depth: many short trainings (make test-all and CI run them)
pytestmark = pytest.mark.slow


RUN = RESUMABLE
ASSETS = Path(__file__).resolve().parents[2] / "tl_cli" / "assets"


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
        (["strategy=finetune", "strategy.freeze_epochs=2"], ["strategy.freeze_epochs=2", "trainer.max_epochs=2"]),
        (["strategy=freeze", "strategy.freeze_epochs=1"], ["strategy.freeze_epochs=1", "not strategy=freeze"]),
        (["strategy=finetune", "strategy.freeze_epochs=-1"], ["strategy.freeze_epochs=-1", ">= 0"]),
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


def _backbone_of(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.backbone.")}


def _killed_after(full: Path, epoch: int, killed: Path) -> Path:
    """What a kill -9 right after `epoch` leaves behind: the run's config and that epoch's last.ckpt."""
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / ".hydra", killed / ".hydra")
    shutil.copy(full / "epochs" / f"e{epoch}.ckpt", killed / "checkpoints" / "last.ckpt")
    return killed


def test_freeze_epochs_trains_the_new_layers_first_then_all_and_resumes_exactly_in_either_phase(
    tlcli, tmp_path: Path
) -> None:
    # RUN: extend_finetune from the embedded source (BatchNorm throughout), 4 epochs; the first 2 train the new
    # layers alone
    result = tlcli("train", *RUN, "strategy.freeze_epochs=2", *KEEP_EPOCHS, f"hydra.run.dir={tmp_path / 'full'}")
    full = run_dir_of(result)
    source = {k: v for k, v in load_file(ASSETS / "fashion_mnist_test_resnet.safetensors").items() if "backbone." in k}
    backbones = [_backbone_of(full / "epochs" / f"e{epoch}.ckpt") for epoch in range(4)]
    for backbone in backbones[:2]:  # weights and BatchNorm running statistics: bit-identical to the source
        assert backbone.keys() == source.keys() and all(torch.equal(backbone[k], source[k]) for k in source)
    statistics = [k for k in source if k.endswith("running_mean")]
    for backbone in backbones[2:]:
        assert all(not torch.equal(backbone[k], source[k]) for k in statistics)
        assert not torch.equal(backbone["backbone.conv1.0.weight"], source["backbone.conv1.0.weight"])
    heads = [torch.load(full / "epochs" / f"e{e}.ckpt", weights_only=True)["state_dict"]["net.head.weight"]
             for e in range(4)]  # fmt: skip
    assert all(not torch.equal(a, b) for a, b in zip(heads, heads[1:], strict=False))  # the head trains throughout
    pattern = r"epoch 3/4: backbone unfrozen after strategy.freeze_epochs=2 \(step (\d+)\)"
    unfrozen = re.findall(pattern, result.stdout + result.stderr)
    assert len(unfrozen) == 1 and unfrozen[0] in (full / "train.log").read_text()
    # a kill in the middle of the frozen phase, and one in the training phase: the resumed run's later epochs
    # equal the uninterrupted run's (its last epoch's weights, each epoch's train and val metrics). The copy's
    # best.ckpt is another file (Lightning forgets the best score of a checkpoint from another dirpath), so the
    # comparison is per epoch, not of summary.json
    final = torch.load(full / "epochs" / "e3.ckpt", weights_only=True)["state_dict"]
    for epoch in (0, 2):
        killed = _killed_after(full, epoch, tmp_path / f"killed_e{epoch}")
        assert run_dir_of(tlcli("train", f"resume={killed}")) == killed
        resumed = torch.load(killed / "epochs" / "e3.ckpt", weights_only=True)["state_dict"]
        assert resumed.keys() == final.keys() and all(torch.equal(v, resumed[k]) for k, v in final.items()), epoch
        assert _epoch_metrics(killed, after=epoch) == _epoch_metrics(full, after=epoch)


def _epoch_metrics(run: Path, after: int) -> list[tuple[str, ...]]:
    """Train and val metrics of the epochs after `after`, as metrics.csv logged them."""
    keys = ("epoch", "train/loss", "train/acc", "val/loss", "val/acc")
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return [tuple(r[k] for k in keys) for r in rows if r["epoch"] and after < int(r["epoch"]) < 4]
