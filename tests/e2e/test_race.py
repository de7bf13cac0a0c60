"""`tlcli train strategy=auto` with method=race (the default), end to end on the smoke config: the pick's
continued run is bit-identical to training it straight; a frozen pick trains in the run dir (its race ran on
un-augmented cached features); a tiny val set falls back to the prior; the run dir is a normal one for eval.

`callbacks.model_checkpoint.monitor=null` makes last.ckpt the final epoch's (Lightning rewrites it only with a new
best otherwise), and `strategy.auto.tie_se=1000` ties every candidate, so the prior decides on any CPU.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from tests.conftest import SMOKE, compose, run_dir_of, summary_of

RACE = [*SMOKE, "trainer.max_epochs=4", "callbacks.model_checkpoint.monitor=null"]
ALL_TIED = ["strategy=auto", "strategy.auto.tie_se=1000"]


def _weights(checkpoint) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow  # a race: every candidate trains, then the winner
def test_the_race_winner_continues_exactly_as_a_straight_run(tlcli, tmp_path) -> None:
    race = tlcli("train", *ALL_TIED, *RACE)
    run_dir = run_dir_of(race)
    straight = run_dir_of(tlcli("train", "strategy=finetune", *RACE))
    auto = summary_of(run_dir)["strategy_auto"]
    assert auto["method"] == "race" and auto["chosen"] == "finetune"
    log = race.stderr + race.stdout
    assert "strategy=auto chose finetune by race" in log and "strategy=auto picks finetune (continues" in log
    stages = {name: c["stage"] for name, c in auto["candidates"].items()}
    assert stages == {
        "freeze": "proxy",
        "extend_freeze": "proxy",
        "finetune": "race",
        "extend_finetune": "race",
        "scratch": "race",  # scratch_min_per_class=1: it races wherever every class has a train image
    }
    first = math.ceil(auto["race_fraction"] * 4)
    assert auto["race_epochs"] == first and auto["candidates"]["extend_finetune"]["epochs"] == first
    assert auto["candidates"]["extend_finetune"]["steps"] > 0 and auto["continued"] is True
    assert (
        auto["final"]["epochs"] == 4 and auto["final"]["steps"] == 4 * auto["candidates"]["finetune"]["steps"] // first
    )
    # stopped after 2 epochs and resumed: the same weights and BatchNorm statistics as 4 epochs in one go
    a, b = _weights(run_dir / "checkpoints/last.ckpt"), _weights(straight / "checkpoints/last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # candidates keep their curves; their checkpoints and the race's feature cache are gone
    assert (run_dir / "auto/extend_finetune/metrics.csv").is_file()
    saved = json.loads((run_dir / "auto/race.json").read_text())
    assert saved["chosen"] == "finetune" and auto["final"]["seconds"] > 0
    assert not list((run_dir / "auto").rglob("*.ckpt")) and not (run_dir / "auto/feature_cache").exists()
    evaluated = tlcli("eval", f"ckpt={run_dir}", f"output_dir={tmp_path / 'eval'}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert abs(metrics["acc"] - summary_of(run_dir)["metrics"]["test/acc"]) < 1e-6


@pytest.mark.slow  # a race: every candidate trains, then the winner
def test_the_continued_winner_chooses_its_best_epoch_over_the_race_epochs_too(tlcli) -> None:
    """With the default monitor (val/acc), the continued run keeps its checkpoint callback's state from the race:
    Lightning drops it, with a warning, when the checkpoint folder changed. Its best checkpoint is a straight run's."""
    smoke = ["experiment=smoke", "trainer.max_epochs=4"]
    race = tlcli("train", *ALL_TIED, *smoke)
    run_dir = run_dir_of(race)
    straight = run_dir_of(tlcli("train", "strategy=finetune", *smoke))
    assert "dirpath has changed" not in race.stdout + race.stderr
    ours, theirs = summary_of(run_dir), summary_of(straight)
    assert ours["strategy_auto"]["chosen"] == "finetune"
    assert ours["metrics"]["val/acc"] == theirs["metrics"]["val/acc"]
    a, b = _weights(run_dir / ours["best_checkpoint"]), _weights(straight / theirs["best_checkpoint"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # a race: every candidate trains, then the pick
def test_a_frozen_pick_trains_in_the_run_dir_after_an_augmentation_free_proxy(tlcli) -> None:
    """The frozen candidates race on cached features of un-augmented images even when the run augments; a frozen
    lead gets a second look; a frozen pick then trains in the run dir with the run's augmentation, and no trainable
    candidate continues."""
    second_look = "strategy.auto.confirm_fraction=0.5"  # the frozen lead is checked again at 2 of 4 epochs
    result = tlcli("train", *ALL_TIED, "strategy.auto.prior=extend_freeze", second_look, "data.augment=true", *RACE)
    run_dir = run_dir_of(result)
    summary = summary_of(run_dir)
    auto = summary["strategy_auto"]
    assert auto["chosen"] == "extend_freeze" and auto["continued"] is False
    # the best trainable candidate by the tie order (finetune) trained on from its race epoch to the second look
    assert auto["candidates"]["finetune"]["stage"] == "second look" and auto["candidates"]["finetune"]["epochs"] == 2
    assert auto["candidates"]["extend_finetune"]["epochs"] == auto["race_epochs"] == 1
    assert auto["why"].startswith("second look at 2 epochs (extend_freeze led at 1)")
    assert auto["candidates"]["extend_freeze"]["stage"] == "proxy" and auto["final"]["epochs"] == 4
    from tl_cli.run.training import build_job

    expected = build_job(compose(["strategy=extend_freeze", *RACE])).net.param_counts()
    assert summary["strategy"] == "auto" and summary["params"] == expected
    proxy = yaml.safe_load((run_dir / "auto/extend_freeze/hparams.yaml").read_text())["config"]["data"]
    assert proxy["augment"] is False and "feature cache on" in result.stderr + result.stdout
    assert summary["feature_cache"] is False  # the pick itself trains on augmented images


@pytest.mark.slow  # a race: every candidate trains, then the winner
def test_a_frozen_winner_stopped_while_it_retrains_resumes_as_itself(tlcli, tmp_path) -> None:
    """race.json records the pick before it trains in the run dir, so a rerun resumes the frozen pick from its own
    last.ckpt, without racing again."""
    smoke = ["experiment=smoke", "trainer.max_epochs=4"]  # the val/acc monitor: a finished fit keeps its best score
    args = [*ALL_TIED, "strategy.auto.prior=extend_freeze", *smoke, f"hydra.run.dir={tmp_path / 'run'}"]
    run_dir = run_dir_of(tlcli("train", *args))
    assert json.loads((run_dir / "auto/race.json").read_text())["chosen"] == "extend_freeze"
    (run_dir / "summary.json").unlink()  # as if stopped before the end: last.ckpt is the frozen winner's
    again = tlcli("train", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary_of(run_dir_of(again))["strategy_auto"]["chosen"] == "extend_freeze"


@pytest.mark.slow  # a race: every candidate trains, then the winner
def test_a_scratch_winner_records_the_lr_it_trained_at(tlcli) -> None:
    """scratch races and continues at optim.lr x scratch_lr_mult; strategy_auto.lr says so, summary.json's lr
    stays the command's (a sweep's key)."""
    result = tlcli("train", *ALL_TIED, "strategy.auto.prior=scratch", "strategy.auto.scratch_lr_mult=0.5",
                   "optim.lr=0.02", *RACE)  # fmt: skip
    summary = summary_of(run_dir_of(result))
    auto = summary["strategy_auto"]
    assert auto["chosen"] == "scratch" and auto["continued"] is True
    assert summary["lr"] == 0.02 and abs(auto["lr"] - 0.01) < 1e-12


def test_a_tiny_val_set_takes_the_prior_without_a_race(tlcli) -> None:
    result = tlcli("train", "strategy=auto", "strategy.auto.min_val_per_class=1000", *RACE)
    auto = summary_of(run_dir_of(result))["strategy_auto"]
    assert auto["chosen"] == "finetune" and auto["why"].startswith("no race:")
    assert auto["candidates"] == {}


def test_one_epoch_leaves_nothing_to_race_on(tlcli) -> None:
    result = tlcli("train", "strategy=auto", "experiment=smoke", "trainer.max_epochs=1")
    auto = summary_of(run_dir_of(result))["strategy_auto"]
    assert auto["chosen"] == "finetune" and auto["why"].startswith("no race: trainer.max_epochs=1")
